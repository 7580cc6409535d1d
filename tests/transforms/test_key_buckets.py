"""key_buckets: every process and run puts a key in the same bucket, spread evenly, whatever the array's layout."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa

from bulkinfer.transforms.key_tables import KEY_BUCKETS, key_bucket, key_buckets

KEYS = [f"covid vaccine {i}" if i % 3 else f"vacuna covid {i} ñandú 東京" for i in range(20_000)] + ["", "a", "é"]


def test_the_same_key_gets_the_same_bucket_whatever_the_array_layout():
    whole = key_buckets(pa.array(KEYS))
    assert all(key_bucket(key) == whole[i] for i, key in enumerate(KEYS[:500]))
    assert (key_buckets(pa.array(KEYS).slice(7_000, 5_000)) == whole[7_000:12_000]).all()
    assert (key_buckets(pa.chunked_array([pa.array(KEYS[:3]), pa.array(KEYS[3:])])) == whole).all()
    assert (key_buckets(pa.array(KEYS, pa.large_string())) == whole).all()
    assert key_buckets(pa.array([None, "a"], pa.string()))[0] == 0


def test_buckets_do_not_depend_on_the_process():
    code = (
        "import json, pyarrow as pa; from bulkinfer.transforms.key_tables import key_buckets; "
        "print(json.dumps(key_buckets(pa.array(%r)).tolist()))"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code % (KEYS[:300],)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        for seed in ("1", "2")
    ]
    assert json.loads(runs[0].stdout) == json.loads(runs[1].stdout) == key_buckets(pa.array(KEYS[:300])).tolist()


def test_keys_spread_over_every_bucket():
    counts = np.bincount(key_buckets(pa.array(KEYS)), minlength=KEY_BUCKETS)
    expected = len(KEYS) / KEY_BUCKETS
    assert counts.min() > 0.8 * expected and counts.max() < 1.2 * expected, counts
    assert set(np.unique(key_buckets(pa.array(KEYS), 7))) == set(range(7))
