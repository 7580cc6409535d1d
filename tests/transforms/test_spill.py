"""Tables across shuffles as files: the writer's buffering, and the stages giving the same tables spilled or not."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.testing.test_pipeline import TestPipeline  # noqa: I001
from apache_beam.testing.util import assert_that, equal_to

from bulkinfer.format.records import Provenance, query_groups
from bulkinfer.transforms import spill
from bulkinfer.transforms.key_tables import KeyTable, ToGroups
from bulkinfer.transforms.normalize_keys import NormalizeKeys
from bulkinfer.transforms.spill import SpillWriter, read_spilled

PROVENANCE = Provenance(run_id="r", model="m", model_digest="d", task="t", task_fingerprint="f", fingerprint="g", engine="e")


def _table(start: int, n: int) -> pa.Table:
    return pa.table({"n": list(range(start, start + n))})


def test_without_a_directory_each_table_is_handed_on_as_it_came():
    writer = SpillWriter(None, flush_rows=1)
    table = _table(0, 3)
    assert list(writer.add("a", table)) == [("a", table)]
    assert list(writer.finish()) == []


def test_tables_wait_until_the_buffer_is_full_then_go_out_one_file_per_key(tmp_path):
    writer = SpillWriter(str(tmp_path / "spill"), flush_rows=10)
    assert list(writer.add("a", _table(0, 4))) == []
    assert list(writer.add("b", _table(4, 4))) == []
    flushed = dict(writer.add("a", _table(8, 4)))  # 12 rows: both keys go out
    assert sorted(flushed) == ["a", "b"]
    assert all(isinstance(path, str) and path.startswith(str(tmp_path / "spill")) for path in flushed.values())
    assert read_spilled([flushed["a"]])[0].column("n").to_pylist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert read_spilled([flushed["b"]])[0].column("n").to_pylist() == [4, 5, 6, 7]
    assert list(writer.finish()) == [], "nothing was left to write"

    assert list(writer.add("c", _table(0, 2))) == []
    [rest] = list(writer.finish())
    key, path = rest.value
    assert key == "c" and read_spilled([path])[0].column("n").to_pylist() == [0, 1]
    assert len(list((tmp_path / "spill").iterdir())) == 3


def test_read_spilled_takes_file_names_and_tables_alike(tmp_path):
    writer = SpillWriter(str(tmp_path), flush_rows=1)
    [(_, path)] = list(writer.add(0, _table(0, 2)))
    table = _table(5, 1)
    assert [t.column("n").to_pylist() for t in read_spilled([path, table])] == [[0, 1], [5]]


def _unshuffled(tables: list[pa.Table]) -> tuple[list, list]:
    """What NormalizeKeys makes of the tables without Beam or files: its two DoFns called directly, grouped by hand."""
    by_bucket: dict[int, list[pa.Table]] = {}
    dead: list = []
    key_table = KeyTable("query", [], PROVENANCE)
    for table in tables:
        for out in key_table.process(table):
            if isinstance(out, pvalue.TaggedOutput):
                dead.extend(out.value.to_pylist())
            else:
                by_bucket.setdefault(out[0], []).append(out[1])
    groups = [g for item in by_bucket.items() for merged in ToGroups([]).process(item) for g in query_groups(merged)]
    return groups, dead


def test_normalize_keys_gives_the_same_groups_and_dead_letters_spilled_as_not(tmp_path, monkeypatch):
    # Several input tables share keys (one spelling per table), so the merge after the shuffle reads several files per bucket.
    spellings = [[f"Query {k}" if t % 2 else f"  query   {k} " for k in range(t, t + 40)] for t in range(0, 120, 15)]
    tables = [pa.table({"query": queries + [None, "  "]}) for queries in spellings]
    groups, dead = _unshuffled(tables)
    assert len(groups) == 145 and len(dead) == 16

    written: list[str] = []
    write = SpillWriter._write

    def counted(self, table):
        written.append(write(self, table))
        return written[-1]

    monkeypatch.setattr(SpillWriter, "_write", counted)
    monkeypatch.setattr(spill, "FLUSH_ROWS", 50)  # many flushes, so a bucket's keys are spread over files
    with TestPipeline() as p:
        spilled, spilled_dead = p | beam.Create(tables) | NormalizeKeys("query", [], PROVENANCE, spill=str(tmp_path / "spill"))
        assert_that(spilled | "Groups" >> beam.FlatMap(query_groups), equal_to(groups), label="groups")
        assert_that(spilled_dead | "Dead" >> beam.FlatMap(lambda t: t.to_pylist()), equal_to(dead), label="dead")
    assert len(written) > 8, "the spilled run wrote too few files to spread buckets over several"
    assert len(list((tmp_path / "spill").iterdir())) == len(written)
