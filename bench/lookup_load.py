"""Benchmark: open a 1M-row synonyms table and look keys up (prints figures; not a test).

python bench/lookup_load.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bulkinfer import layout
from bulkinfer.keys import normalize_key
from bulkinfer.table import open_table


def build(table_dir: Path, rows: int) -> list[str]:
    rng = random.Random(0)
    words = [f"w{n}" for n in range(5000)]
    keys = sorted({normalize_key(" ".join(rng.choices(words, k=3)) + f" {i}") for i in range(rows)})
    vdir = table_dir / "versions" / "v1"
    vdir.mkdir(parents=True)
    provenance = {
        "model": "m",
        "model_digest": "d",
        "task": "synonyms",
        "task_fingerprint": "f",
        "fingerprint": "g",
        "engine": "e",
        "run_id": "v1",
    }
    table = pa.table(
        {
            "key": keys,
            "query": keys,
            "synonyms": [[f"{k} a", f"{k} b", f"{k} c"] for k in keys],
            "raw_output": [f" {k} a, {k} b, {k} c" for k in keys],
            "source_rows": pa.array([1] * len(keys), pa.int64()),
            **{name: [value] * len(keys) for name, value in provenance.items()},
        }
    )
    pq.write_table(table, vdir / "predictions-00000-of-00001.parquet")
    layout.write_manifest(str(vdir), {"output_column": "synonyms", "output_kind": "list"})
    layout.publish(str(table_dir), "v1")
    return keys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = build(Path(tmp), args.rows)
        opens = []
        for _ in range(3):
            start = time.perf_counter()
            table = open_table(tmp)
            opens.append(time.perf_counter() - start)
        rng = random.Random(1)
        probes = [rng.choice(keys).upper() for _ in range(20_000)] + [f"missing {i}" for i in range(5_000)]
        lat = []
        for q in probes:
            start = time.perf_counter_ns()
            table.get(q)
            lat.append(time.perf_counter_ns() - start)
        lat.sort()
        print(
            json.dumps(
                {
                    "rows": len(table),
                    "open_seconds_median": round(statistics.median(opens), 3),
                    "get_us_p50": round(lat[len(lat) // 2] / 1000, 1),
                    "get_us_p99": round(lat[int(len(lat) * 0.99)] / 1000, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
