"""Weekly reruns: result reuse, atomic publish, quality gates, rollback, one run per table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bulkinfer.cli import main as cli_main
from bulkinfer.errors import ConfigError, GateError
from bulkinfer.format import layout
from bulkinfer.format.lock import TableLock
from bulkinfer.lookup.table import open_table
from bulkinfer.pipelines.cache_job import run
from tests.conftest import task_allowing_failures, write_corpus
from tests.fakes import FakeHandler

KEYS = [f"query {n}" for n in range(200)]


def _job(tmp_path: Path, queries: list, run_id: str, *extra: str, task: str = "synonyms", handler=None) -> dict:
    corpus = write_corpus(tmp_path / f"corpus-{run_id}.parquet", queries)
    argv = ["--task", task, "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", "fake", "--run_id", run_id, *extra]
    return run(argv, model_handler=handler or FakeHandler())


def _spec(tmp_path: Path, example_output: str = "notebook bag, laptop case", gates: str = "") -> str:
    path = tmp_path / "task.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: synonyms
            output: list
            examples:
              - {{input: laptop bag, output: "{example_output}"}}
            template:
              example: "query: {{input}}\\nsynonyms: {{output}}\\n\\n"
              query: "query: {{query}}\\nsynonyms:"
            """
        )
        + gates
    )
    return str(path)


def test_rerun_with_ten_percent_new_keys_generates_only_those(tmp_path):
    first = _job(tmp_path, KEYS, "r1")
    assert first["counts"]["generated"] == 200 and first["counts"]["reused"] == 0
    new_keys = [f"new query {n}" for n in range(20)]
    # a week later: 10% new keys, one key gone, the rest spelt differently
    second = _job(tmp_path, [k.upper() for k in KEYS[1:]] + new_keys, "r2")
    counts = second["counts"]
    assert counts["generated"] == 20, "the handler generated more than the new keys"
    assert counts["reused"] == 199 and counts["keys"] == 219
    table = open_table(str(tmp_path / "table"))
    assert table.version == "r2"
    assert table.get("query 5")["run_id"] == "r1", "a reused row keeps its provenance"
    assert table.get("new query 3")["run_id"] == "r2"
    assert table.get("query 0") is None, "a key that left the corpus leaves the table"


def test_unchanged_corpus_generates_nothing(tmp_path):
    _job(tmp_path, KEYS, "r1")
    again = _job(tmp_path, KEYS, "r2")
    assert again["counts"]["generated"] == 0 and again["counts"]["reused"] == 200
    assert again["quality"]["churn_rate"] == 0.0


def test_deterministic_dead_letters_are_carried_not_retried(tmp_path):
    answers = {"query 0": " drupe", "query 1": " not a label", "query 3": " pome", "query 4": " berry"}
    handler = FakeHandler(answers=answers, too_long=["query 2"])
    task = task_allowing_failures(tmp_path, "classify")
    first = _job(tmp_path, KEYS[:5], "r1", task=task, handler=handler)
    assert first["dead_letter_reasons"] == {"prompt_too_long": 1, "unparseable_output": 1}
    again = _job(tmp_path, KEYS[:5], "r2", task=task, handler=handler)
    assert again["counts"]["generated"] == 0 and again["counts"]["reused_dead_letters"] == 2
    assert again["dead_letter_reasons"] == first["dead_letter_reasons"]


def test_full_regenerates_everything(tmp_path):
    _job(tmp_path, KEYS, "r1")
    assert _job(tmp_path, KEYS, "r2", "--full")["counts"]["generated"] == 200


def test_changed_example_regenerates_everything(tmp_path):
    _job(tmp_path, KEYS, "r1", task=_spec(tmp_path))
    assert _job(tmp_path, KEYS, "r2", task=_spec(tmp_path))["counts"]["generated"] == 0
    changed = _job(tmp_path, KEYS, "r3", task=_spec(tmp_path, example_output="notebook bag, laptop sleeve"))
    assert changed["counts"]["generated"] == 200 and changed["counts"]["reused"] == 0


def test_reader_of_the_old_version_is_unaffected_by_a_publish(tmp_path):
    _job(tmp_path, KEYS, "r1", handler=FakeHandler(answers={"query 1": " first answer"}))
    old = open_table(str(tmp_path / "table"))
    _job(tmp_path, KEYS, "r2", "--full", handler=FakeHandler(answers={"query 1": " second answer"}))
    assert old.version == "r1" and old.get("query 1")["synonyms"] == ["first answer"]
    assert open_table(str(tmp_path / "table")).get("query 1")["synonyms"] == ["second answer"]
    assert open_table(str(tmp_path / "table"), version="r1").get("query 1")["synonyms"] == ["first answer"]


def test_failing_gate_keeps_current_and_the_new_version_for_inspection(tmp_path):
    gates = "gates:\n  max_echo_rate: 0.2\n  max_empty_rate: 0.2\n"
    _job(tmp_path, KEYS, "r1", task=_spec(tmp_path, gates=gates))
    # the model copies the example instead of answering, for every key: the parser drops the copies, nothing is left
    copying = FakeHandler(answers={k: " notebook bag, laptop case" for k in KEYS})
    with pytest.raises(GateError, match=r"quality gate max_empty_rate failed: 1.0 against threshold 0.2.*still serves r1"):
        _job(tmp_path, KEYS, "r2", "--full", task=_spec(tmp_path, gates=gates), handler=copying)
    assert layout.read_current(str(tmp_path / "table")) == "r1"
    manifest = layout.read_manifest(layout.version_dir(str(tmp_path / "table"), "r2"))
    assert manifest["gates"]["passed"] is False and manifest["quality"]["empty_rate"] == 1.0
    assert manifest["quality"]["example_leaks"] == 2 * len(KEYS) and manifest["quality"]["example_leak_rate"] == 1.0
    assert not (tmp_path / "table" / "LOCK").exists()


def test_churn_gate(tmp_path):
    gates = "gates:\n  max_churn_rate: 0.5\n"
    _job(tmp_path, KEYS, "r1", task=_spec(tmp_path, gates=gates))
    changed = FakeHandler(answers={k: " something else" for k in KEYS})
    with pytest.raises(GateError, match=r"max_churn_rate failed: 1.0"):
        _job(tmp_path, KEYS, "r2", "--full", task=_spec(tmp_path, gates=gates), handler=changed)


def test_rollback_and_versions(tmp_path, capsys):
    table = str(tmp_path / "table")
    for run_id in ("r1", "r2", "r3"):
        _job(tmp_path, KEYS[:10], run_id, "--full")
    assert cli_main(["rollback", "--table", table]) == 0
    assert layout.read_current(table) == "r2"
    assert cli_main(["rollback", "--table", table, "--to", "r3"]) == 0
    assert layout.read_current(table) == "r3"
    assert cli_main(["rollback", "--table", table, "--to", "nope"]) == 2
    capsys.readouterr()
    assert cli_main(["versions", "--table", table]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(v["version"], v["current"]) for v in lines] == [("r1", False), ("r2", False), ("r3", True)]
    assert all(v["counts"]["keys"] == 10 for v in lines)


def test_keep_prunes_old_versions_but_never_current(tmp_path):
    table = str(tmp_path / "table")
    for run_id in ("r1", "r2", "r3"):
        _job(tmp_path, KEYS[:5], run_id, "--keep", "2")
    assert [name for name, _ in layout.list_versions(table)] == ["r2", "r3"]
    layout.publish(table, "r2")  # rolled back; the next run keeps 1 version, yet r2 stays
    _job(tmp_path, KEYS[:5], "r4", "--keep", "1")
    assert [name for name, _ in layout.list_versions(table)] == ["r4"]


def test_second_concurrent_run_is_refused(tmp_path):
    table = str(tmp_path / "table")
    with TableLock(table, "running"):
        with pytest.raises(ConfigError, match=r"is locked by run running.*one run at a time"):
            _job(tmp_path, KEYS[:5], "r1")
    assert _job(tmp_path, KEYS[:5], "r1")["version"] == "r1", "the lock is released after the run"


def test_lock_of_a_dead_run_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "table").mkdir()
    import socket
    import time

    record = {"run_id": "crashed", "host": socket.gethostname(), "pid": int(dead.stdout), "heartbeat": time.time()}
    (tmp_path / "table" / "LOCK").write_text(json.dumps(record))
    assert _job(tmp_path, KEYS[:5], "r1")["version"] == "r1"


CRASH_BEFORE_PUBLISH = """
import os, signal, sys
from bulkinfer.format import layout
from bulkinfer.pipelines import cache_job
from tests.fakes import FakeHandler

def die(*args):
    os.kill(os.getpid(), signal.SIGKILL)

layout.publish = die  # the process dies after writing the version, before swapping CURRENT
cache_job.run(sys.argv[1:], model_handler=FakeHandler())
"""


def test_kill_between_writing_and_publishing_leaves_the_old_version_published(tmp_path):
    table = tmp_path / "table"
    _job(tmp_path, KEYS[:20], "r1")
    corpus = write_corpus(tmp_path / "week2.parquet", KEYS[:30])
    argv = ["--task", "synonyms", "--input", str(corpus), "--output", str(table), "--model", "fake", "--run_id", "r2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", CRASH_BEFORE_PUBLISH, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    assert (table / "versions" / "r2" / "manifest.json").exists(), "the crash was meant to come after the version was written"
    assert layout.read_current(str(table)) == "r1"
    assert len(open_table(str(table))) == 20
    assert (table / "LOCK").exists(), "a killed run leaves its lock behind"
    rerun = run(argv, model_handler=FakeHandler())  # same run id: the dead run's lock is taken over, its leftovers replaced
    assert rerun["version"] == "r2" and rerun["counts"]["reused"] == 20
    assert rerun["counts"]["generated"] == 0 and rerun["counts"]["resumed_from_checkpoints"] == 10
    assert layout.read_current(str(table)) == "r2" and len(open_table(str(table))) == 30


def _fresh_lookup_files(table: str, version: str, into: Path) -> tuple[dict, dict]:
    """The store and match index of a version built from its shards, as a first publish builds them: (store, index)."""
    import sqlite3

    from bulkinfer.lookup.match import AUTOMATON, CLAIMS, MATCH, build_match_index
    from bulkinfer.lookup.store import build_store
    from bulkinfer.lookup.union import read_lookup_rows

    vdir = layout.version_dir(table, version)
    manifest = layout.read_manifest(vdir)
    rows = read_lookup_rows(vdir, manifest)
    build_store(into / "store.sqlite", rows, version, manifest)
    build_match_index(into, rows, version, manifest)
    return _lookup_files(into, sqlite3, (AUTOMATON, CLAIMS, MATCH))


def _lookup_files(directory: Path, sqlite3, names: tuple[str, ...]) -> tuple[dict, dict]:
    def meta(path: Path) -> dict:
        db = sqlite3.connect(path)
        try:
            return dict(db.execute("SELECT name, value FROM meta"))
        finally:
            db.close()

    db = sqlite3.connect(directory / "store.sqlite")
    try:
        store = {"meta": meta(directory / "store.sqlite"), "rows": list(db.execute("SELECT k, v FROM rows ORDER BY k"))}
    finally:
        db.close()
    index = {"meta": meta(directory / names[2]), **{name: (directory / name).read_bytes() for name in names[:2]}}
    return store, index


def _carried(caplog) -> set[str]:
    return {what for what in ("store", "match index") if f"{what} of version r2" in caplog.text and "carried forward" in caplog.text}


def test_unchanged_rerun_carries_store_index_and_quality_forward_as_a_fresh_build_would_make_them(tmp_path, caplog):
    import sqlite3

    from bulkinfer.format import quality
    from bulkinfer.format.manifest import account_rows
    from bulkinfer.lookup.match import AUTOMATON, CLAIMS, MATCH
    from bulkinfer.tasks.spec import task_from_dict

    table = str(tmp_path / "table")
    first = _job(tmp_path, KEYS, "r1")
    with caplog.at_level("INFO"):
        again = _job(tmp_path, KEYS, "r2")
    assert again["counts"]["generated"] == 0 and again["answers_digest"] == first["answers_digest"]
    assert "store of version r2: the rows of" in caplog.text and "match index of version r2: the one of" in caplog.text
    # What was carried is what the rows make: quality counts measured again, lookup files built again.
    vdir = layout.version_dir(table, "r2")
    task = task_from_dict(again["task_spec"])
    account = account_rows(vdir, task.output_column, "r2", len(KEYS), 0)
    measured = quality.measure(task, account.rows, account.dead_records, None)
    assert {name: again["quality"][name] for name in quality.ROW_COUNTS} == {name: measured[name] for name in quality.ROW_COUNTS}
    assert again["quality"]["churn_rate"] == 0.0 and again["quality"]["churn_compared"] == len(KEYS)
    assert again["match"] == first["match"] and again["match"]["items"] > 0
    (tmp_path / "fresh").mkdir()
    assert _lookup_files(Path(vdir), sqlite3, (AUTOMATON, CLAIMS, MATCH)) == _fresh_lookup_files(table, "r2", tmp_path / "fresh")
    assert open_table(table).get("query 5")["run_id"] == "r1"


def test_rerun_with_new_row_counts_builds_its_store_but_keeps_the_index_of_the_same_answers(tmp_path, caplog):
    import sqlite3

    from bulkinfer.lookup.match import AUTOMATON, CLAIMS, MATCH

    table = str(tmp_path / "table")
    _job(tmp_path, KEYS, "r1")
    with caplog.at_level("INFO"):
        again = _job(tmp_path, KEYS + KEYS[:10], "r2")  # ten keys twice as common: source_rows changes, the answers do not
    assert "store of version r2" not in caplog.text and "match index of version r2: the one of" in caplog.text
    assert open_table(table).get("query 3")["source_rows"] == 2
    assert again["quality"]["churn_rate"] == 0.0
    (tmp_path / "fresh").mkdir()
    vdir = Path(layout.version_dir(table, "r2"))
    assert _lookup_files(vdir, sqlite3, (AUTOMATON, CLAIMS, MATCH)) == _fresh_lookup_files(table, "r2", tmp_path / "fresh")


def test_new_answers_are_never_served_from_the_files_of_the_old_ones(tmp_path, caplog):
    table = str(tmp_path / "table")
    _job(tmp_path, KEYS, "r1")
    with caplog.at_level("INFO"):
        changed = _job(tmp_path, KEYS, "r2", "--full", handler=FakeHandler(answers={"query 1": " another answer"}))
    assert "carried forward" not in caplog.text
    assert changed["quality"]["churn_rate"] == pytest.approx(1 / len(KEYS))
    assert open_table(table).get("query 1")["synonyms"] == ["another answer"]
    assert open_table(table).match("another answer")["matches"][0]["concept"] == "query 1"


def test_a_damaged_previous_index_or_store_is_rebuilt_not_carried(tmp_path, caplog):
    from bulkinfer.lookup.match import CLAIMS

    table = str(tmp_path / "table")
    _job(tmp_path, KEYS, "r1")
    old = Path(layout.version_dir(table, "r1"))
    claims = bytearray((old / CLAIMS).read_bytes())
    claims[-2] ^= 0xFF  # same size, other bytes: only the recorded digest tells
    (old / CLAIMS).write_bytes(bytes(claims))
    store = bytearray((old / "store.sqlite").read_bytes())
    store[-100:] = b"\xff" * 100  # the last page overwritten in place
    (old / "store.sqlite").write_bytes(bytes(store))
    with caplog.at_level("INFO"):
        _job(tmp_path, KEYS, "r2")
    assert "its match.claims is damaged" in caplog.text and "not carrying" in caplog.text
    assert "carried forward" not in caplog.text
    served = open_table(table)
    assert served.version == "r2" and served.get("query 7")["synonyms"]
    assert served.match(served.get("query 7")["synonyms"][0])["matches"][0]["concept"] == "query 7"


class _DyingHandler(FakeHandler):
    def run_inference(self, batch, model, inference_args=None):
        raise RuntimeError("the engine died mid-run")


def test_the_files_the_shuffles_carried_are_gone_after_a_run_and_after_a_failed_one(tmp_path, monkeypatch):
    from bulkinfer.transforms import spill

    monkeypatch.setattr(spill, "FLUSH_ROWS", 16)  # many files per bucket
    _job(tmp_path, KEYS, "r1")
    second = _job(tmp_path, [k.upper() for k in KEYS[1:]] + ["one more"], "r2")
    assert second["counts"]["generated"] == 1 and second["counts"]["reused"] == 199
    versions = tmp_path / "table" / "versions"
    assert not list(versions.glob(f"*/{layout.SPILL}")), "a run left its spill directory behind"
    with pytest.raises(Exception, match="the engine died mid-run"):
        _job(tmp_path, KEYS + ["two more"], "r3", handler=_DyingHandler())
    assert (versions / "r3").exists() and not (versions / "r3" / layout.SPILL).exists()
    assert layout.read_current(str(tmp_path / "table")) == "r2"
