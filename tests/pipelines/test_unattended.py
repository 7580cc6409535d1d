"""Unattended runs: failure-rate gates, a checked CURRENT, verified versions, retries of a published run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bulkinfer.cli import main as cli_main
from bulkinfer.errors import EngineError, GateError, TableError
from bulkinfer.format import layout
from bulkinfer.lookup.table import open_table
from bulkinfer.pipelines.cache_job import run
from tests.conftest import write_corpus
from tests.fakes import FakeHandler

ROOT = Path(__file__).resolve().parents[2]
KEYS = [f"query {n}" for n in range(100)]


class CountingHandler(FakeHandler):
    """A fake handler that records how many prompts reached it (none may, when a run must stop before work)."""

    prompts = 0

    def run_inference(self, batch, model, inference_args=None):
        CountingHandler.prompts += len(batch)
        return super().run_inference(batch, model, inference_args)


class DeadEngineHandler(FakeHandler):
    """Fails the way a dead engine does: the handler raises EngineError on the first batch."""

    calls = 0

    def run_inference(self, batch, model, inference_args=None):
        DeadEngineHandler.calls += 1
        raise EngineError("the engine failed and cannot go on: EngineDeadError: engine core died")


def _argv(tmp_path: Path, queries: list, run_id: str, *extra: str) -> list[str]:
    corpus = write_corpus(tmp_path / f"corpus-{run_id}.parquet", queries)
    table = str(tmp_path / "table")
    return ["--task", "synonyms", "--input", str(corpus), "--output", table, "--model", "fake", "--run_id", run_id, *extra]


def _publish_good(tmp_path: Path) -> Path:
    run(_argv(tmp_path, KEYS, "good"), model_handler=FakeHandler())
    table = tmp_path / "table"
    assert layout.read_current(str(table)) == "good"
    return table


# Case 1: a failing engine, or prompts all over the context, never publish over a good version.


@pytest.mark.parametrize(
    ("handler", "gate"),
    [
        (FakeHandler(failing=KEYS), "max_failed_rate"),  # every generation failed
        (FakeHandler(too_long=KEYS), "max_failed_rate"),  # every prompt over the context
        (FakeHandler(failing=KEYS[:6]), "max_failed_rate"),  # 6% failed: over the 5% default
    ],
    ids=["all_failed", "all_too_long", "six_percent_failed"],
)
def test_failure_rate_gate_refuses_the_version_and_keeps_the_good_one(tmp_path, handler, gate):
    table = _publish_good(tmp_path)
    with pytest.raises(GateError, match=f"quality gate {gate} failed") as refused:
        run(_argv(tmp_path, KEYS, "bad", "--full"), model_handler=handler)
    assert "still serves good" in str(refused.value)
    assert layout.read_current(str(table)) == "good"
    manifest = layout.read_manifest(layout.version_dir(str(table), "bad"))
    assert manifest["gates"]["passed"] is False
    assert open_table(str(table)).get("query 3") is not None


def test_a_few_failures_under_the_threshold_publish(tmp_path):
    table = _publish_good(tmp_path)
    manifest = run(_argv(tmp_path, KEYS, "ok", "--full"), model_handler=FakeHandler(failing=KEYS[:5]))
    assert manifest["quality"]["failed_rate"] == 0.05 and manifest["gates"]["passed"]
    assert layout.read_current(str(table)) == "ok"


def test_a_version_without_keys_is_never_published(tmp_path):
    table = _publish_good(tmp_path)
    with pytest.raises(GateError, match="quality gate min_keys failed"):
        run(_argv(tmp_path, [None, "", "   "], "empty"), model_handler=FakeHandler())
    assert layout.read_current(str(table)) == "good"


def test_a_fatal_engine_error_stops_the_run_at_once(tmp_path):
    table = _publish_good(tmp_path)
    DeadEngineHandler.calls = 0
    with pytest.raises(EngineError, match="cannot go on"):
        run(_argv(tmp_path, KEYS, "dead", "--full"), model_handler=DeadEngineHandler())
    assert DeadEngineHandler.calls == 1, "the run went on after the engine died"
    assert layout.read_current(str(table)) == "good"


# Case 4: CURRENT is checked by run before any work, and by every reader.


@pytest.mark.parametrize(
    "content",
    [b"garbage text !!\n", b"\xff\xfe\x00binary\x80", b"../../other/versions/v\n", b"missing-version\n"],
    ids=["text", "binary", "path", "missing"],
)
def test_run_refuses_a_damaged_current_before_any_work(tmp_path, content):
    table = _publish_good(tmp_path)
    (table / "CURRENT").write_bytes(content)
    CountingHandler.prompts = 0
    with pytest.raises(TableError, match="CURRENT is damaged|no complete version"):
        run(_argv(tmp_path, KEYS, "next"), model_handler=CountingHandler())
    assert CountingHandler.prompts == 0, "prompts were generated before the check"
    assert not (table / "versions" / "next").exists()


@pytest.mark.parametrize(
    "content", [b"garbage text !!\n", b"\xff\xfe\x00binary\x80", b"../../other/versions/v\n"], ids=["text", "binary", "path"]
)
def test_readers_refuse_a_damaged_current_in_one_line(tmp_path, capsys, content):
    table = _publish_good(tmp_path)
    other = tmp_path / "other" / "versions" / "v"
    other.mkdir(parents=True)
    (table / "CURRENT").write_bytes(content)
    for argv in (["lookup", "--table", str(table), "query 1"], ["export", "store", "--table", str(table)]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert "CURRENT is damaged" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # Listing still works (it is how an operator picks the version to repair CURRENT with), and rollback repairs it.
    assert cli_main(["versions", "--table", str(table)]) == 0
    assert '"version": "good"' in capsys.readouterr().out
    assert cli_main(["rollback", "--table", str(table), "--to", "good"]) == 0
    assert layout.read_current(str(table)) == "good"


# Case 5: no version flag reaches outside the table.


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "store", "--table", "{table}", "--version", "../../victim/versions/x"],
        ["export", "redis", "--table", "{table}", "--url", "redis://127.0.0.1:1/0", "--version", "../../victim/versions/x"],
        ["lookup", "--table", "{table}", "--version", "../../victim/versions/x", "q"],
        ["rollback", "--table", "{table}", "--to", "../../victim/versions/x"],
    ],
    ids=["export_store", "export_redis", "lookup", "rollback"],
)
def test_version_flags_refuse_paths(tmp_path, capsys, argv):
    table = _publish_good(tmp_path)
    victim = tmp_path / "victim" / "versions" / "x"
    victim.mkdir(parents=True)
    layout.write_manifest(str(victim), {"version": "x", "output_column": "synonyms", "counts": {"keys": 0}})
    assert cli_main([part.format(table=table) for part in argv]) == 2
    assert "is not a version name" in capsys.readouterr().err
    assert sorted(p.name for p in victim.iterdir()) == ["manifest.json"], "something was written outside the table"


# Case 6: a damaged version is never published, and a damaged published version stops a run before work.


def _truncate_predictions(vdir: Path) -> Path:
    shard = next(vdir.glob("predictions-*.parquet"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard


def test_rollback_refuses_a_damaged_version(tmp_path, capsys):
    table = _publish_good(tmp_path)
    run(_argv(tmp_path, KEYS, "newer"), model_handler=FakeHandler())
    shard = _truncate_predictions(table / "versions" / "good")
    assert cli_main(["rollback", "--table", str(table), "--to", "good"]) == 2
    err = capsys.readouterr().err
    assert str(shard) in err and "damaged" in err and "Traceback" not in err
    assert layout.read_current(str(table)) == "newer"


def test_publish_refuses_counts_that_do_not_match_the_manifest(tmp_path):
    table = _publish_good(tmp_path)
    manifest = layout.read_manifest(str(table / "versions" / "good"))
    layout.write_manifest(str(table / "versions" / "good"), manifest | {"counts": manifest["counts"] | {"keys": 99}})
    with pytest.raises(TableError, match="predictions shards hold 100 rows, its manifest says 99"):
        layout.verify_version(str(table), "good")


def test_run_over_a_damaged_published_version_stops_before_work_naming_the_file(tmp_path):
    table = _publish_good(tmp_path)
    shard = _truncate_predictions(table / "versions" / "good")
    CountingHandler.prompts = 0
    with pytest.raises(TableError, match=f"the published version good is damaged: {shard}"):
        run(_argv(tmp_path, KEYS, "next"), model_handler=CountingHandler())
    assert CountingHandler.prompts == 0


# Case 10: a retry after a successful publish succeeds and cleans up.

KILL_AFTER_PUBLISH = """
import os, signal, sys
from bulkinfer.format import layout
from bulkinfer.pipelines import cache_job
from tests.fakes import FakeHandler

publish = layout.publish

def publish_then_die(table, version):
    publish(table, version)
    os.kill(os.getpid(), signal.SIGKILL)

layout.publish = publish_then_die
cache_job.run(sys.argv[1:], model_handler=FakeHandler())
"""


def test_retry_of_a_published_run_succeeds_and_cleans_its_checkpoints(tmp_path):
    table = _publish_good(tmp_path)
    argv = _argv(tmp_path, KEYS + ["one more"], "r2", "--checkpoint_rows", "8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_PUBLISH, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert layout.read_current(str(table)) == "r2"
    assert (table / "checkpoints").exists(), "the kill came after the cleanup: the test proves nothing"

    CountingHandler.prompts = 0
    manifest = run(argv, model_handler=CountingHandler())
    assert manifest["version"] == "r2" and CountingHandler.prompts == 0
    assert not (table / "checkpoints").exists()
    assert not (table / "LOCK").exists()
    shards = sorted((table / "versions" / "r2").glob("predictions-*.parquet"))
    assert shards
    assert sum(pq.read_metadata(shard).num_rows for shard in shards) == 101
