"""WriteVersion: shards written per bundle into staging, moved into the version only once committed."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from bulkinfer.format.records import DEAD_LETTER_SCHEMA
from bulkinfer.transforms.write_version import STAGING, WriteVersion, _CommitShards, _WriteShard

SCHEMA = pa.schema([("key", pa.string()), ("source_rows", pa.int64())])


def _tables(start: int, n: int) -> pa.Table:
    return pa.table({"key": [f"k{i}" for i in range(start, start + n)], "source_rows": list(range(n))})


def test_every_row_lands_once_and_an_empty_kind_gets_an_empty_file(tmp_path):
    vdir = tmp_path / "v"
    with beam.Pipeline() as pipeline:
        predictions = pipeline | "P" >> beam.Create([_tables(0, 5), _tables(5, 7), _tables(12, 0)])
        dead = pipeline | "D" >> beam.Create([pa.table({"key": ["x"]}).slice(0, 0)])
        _ = (predictions, dead) | WriteVersion(str(vdir), SCHEMA)
    shards = sorted(vdir.glob("predictions-*.parquet"))
    assert shards and all(p.name.endswith(f"-of-{len(shards):05d}.parquet") for p in shards)
    keys = [k for p in shards for k in pq.read_table(p).column("key").to_pylist()]
    assert sorted(keys) == sorted(f"k{i}" for i in range(12))
    (dead_file,) = vdir.glob("dead_letter-*.parquet")
    assert pq.read_table(dead_file).num_rows == 0 and pq.read_schema(dead_file).equals(DEAD_LETTER_SCHEMA)
    assert not (vdir / STAGING).exists(), "staging directory left behind"


def test_a_failed_attempts_shard_never_enters_the_version_and_commit_can_run_again(tmp_path):
    vdir, staging = tmp_path / "v", tmp_path / "v" / STAGING
    writer = _WriteShard(str(staging), "predictions", SCHEMA)
    names = []
    for rows in (_tables(0, 3), _tables(3, 4)):  # two bundles that commit
        writer.start_bundle()
        writer.process(rows)
        names += [value.value for value in writer.finish_bundle()]
    writer.start_bundle()  # a bundle that failed after writing: its name never reached the commit
    writer.process(_tables(100, 2))
    orphan = [value.value for value in writer.finish_bundle()]
    assert len(names) == 2 and len(orphan) == 1 and (staging / orphan[0]).exists()

    commit = _CommitShards(str(vdir), str(staging), {"predictions": SCHEMA, "dead_letter": DEAD_LETTER_SCHEMA})
    first = list(commit.process(None, names))
    again = list(commit.process(None, names))  # a retried commit moves nothing twice and loses nothing
    assert first == again
    keys = sorted(k for p in vdir.glob("predictions-*.parquet") for k in pq.read_table(p).column("key").to_pylist())
    assert keys == sorted(f"k{i}" for i in range(7))
    assert not staging.exists()
