"""Faults: a job killed with SIGKILL at any point, then rerun with the same run id."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bulkinfer.format import layout
from bulkinfer.lookup.table import open_table
from bulkinfer.pipelines.cache_job import run
from tests.conftest import write_corpus
from tests.fakes import FakeHandler

ROOT = Path(__file__).resolve().parents[2]
OLD = [f"old {n}" for n in range(100)]
NEW = [f"new {n}" for n in range(200)]

# Runs the job with the fake handler in a child process that SIGKILLs itself at one point.
KILLER = """
import os, signal, sys
from bulkinfer.format import layout
from bulkinfer.pipelines import cache_job
from tests.fakes import FakeHandler

point, argv = sys.argv[1], sys.argv[2:]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

class KillingHandler(FakeHandler):
    def __init__(self, kill_after):
        super().__init__()
        self._left = kill_after

    def load_model(self):
        if self._left == 0:
            die()
        return super().load_model()

    def run_inference(self, batch, model, inference_args=None):
        self._left -= len(batch)
        if self._left < 0:
            die()
        return super().run_inference(batch, model, inference_args)

handler = FakeHandler()
if point == "before_generation":
    handler = KillingHandler(0)
elif point == "mid_generation":
    handler = KillingHandler(120)
elif point == "mid_write":
    from bulkinfer.transforms import write_version
    original = write_version._WriteShard._write_pending
    def write_then_die(self):  # a row group of a shard written, the file not yet closed
        rows = self._rows
        original(self)
        if rows > 50:
            die()
    write_version._WriteShard._write_pending = write_then_die
elif point == "between_write_and_publish":
    layout.publish = die
cache_job.run(argv, model_handler=handler)
"""


def _argv(tmp_path: Path, queries: list[str], run_id: str) -> list[str]:
    corpus = write_corpus(tmp_path / f"{run_id}.parquet", queries)
    # Small chunks and write batches, so each kill point falls inside the work.
    return [
        "--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", "fake",
        "--run_id", run_id, "--checkpoint_rows", "8",
    ]  # fmt: skip


def _checkpointed(table: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in table.glob("checkpoints/*/predictions-*.parquet"))


@pytest.mark.parametrize("point", ["before_generation", "mid_generation", "mid_write", "between_write_and_publish"])
def test_killed_run_leaves_the_published_table_whole_and_resumes(tmp_path, point):
    table = tmp_path / "table"
    run(_argv(tmp_path, OLD, "r1"), model_handler=FakeHandler())
    argv = _argv(tmp_path, OLD + NEW, "r2")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILLER, point, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]

    # The published table is the old one, whole, whatever the kill interrupted.
    assert layout.read_current(str(table)) == "r1"
    old = open_table(str(table))
    assert len(old) == 100 and old.get("old 7") is not None

    durable = _checkpointed(table)
    expected = {"before_generation": (0, 0), "mid_generation": (1, 199), "mid_write": (1, 200), "between_write_and_publish": (200, 200)}
    low, high = expected[point]
    assert low <= durable <= high

    rerun = run(argv, model_handler=FakeHandler())
    counts = rerun["counts"]
    assert counts["resumed_from_checkpoints"] == durable
    assert counts["generated"] == 200 - durable, "results the dead run wrote durably were generated again"
    assert counts["reused"] == 100
    shards = sorted((table / "versions" / "r2").glob("predictions-*.parquet"))
    keys = [key for shard in shards for key in pq.read_table(shard, columns=["key"]).column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == 300, "a key is missing or duplicated"
    assert layout.read_current(str(table)) == "r2"
    assert not (table / "checkpoints").exists(), "checkpoints are dropped once published"
    assert counts["rows_in"] == counts["rows_in_table"] + counts["rows_dead"]
