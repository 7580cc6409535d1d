"""Operating `bulkinfer run` on a real vLLM engine (tiny local model): the quiet terminal, progress, the dry run's estimate.

How close the dry run's engine-time estimate comes to a real run's is a figure, not a
pass/fail check on a shared machine: ``bench/dry_run_estimate.py`` prints it. These tests
check what must be exact: the counts, the prompt tokens and the cost arithmetic.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bulkinfer.pipelines.cache_job import run
from bulkinfer.tools.dry_run import dry_run
from tests.conftest import ungated_task, write_corpus

pytestmark = pytest.mark.engine

LONG = " ".join(["vaccine"] * 700)  # too long for the 512-token context: a prompt_too_long dead letter
QUERIES = ["Covid Vaccine", "covid   vaccine", "cheap flights", "used cars", None, " "] + [f"query {n}" for n in range(60)]
NEW = [f"new query {n}" for n in range(8)] + [LONG]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bulkinfer.cli", *args], capture_output=True, text=True, timeout=900)


def _args(corpus: Path, table: Path, model: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--task",
        ungated_task(corpus.parent),
        "--input",
        str(corpus),
        "--output",
        str(table),
        "--model",
        str(model),
        "--max_model_len",
        "512",
        *extra,
    ]


@pytest.fixture(scope="module")
def first_run(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("operate")
    corpus = write_corpus(root / "queries.parquet", QUERIES)
    table = root / "table"
    done = _cli(*_args(corpus, table, tiny_model, "--run_id", "v1", "--progress", "lines", "--progress_interval", "1"))
    return root, corpus, table, done


def test_stdout_is_one_json_summary_and_stderr_only_progress_and_the_log_path(first_run):
    _, _, table, done = first_run
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # the whole of stdout: `| jq` works
    assert summary["version"] == "v1" and summary["counts"]["generated"] == 63
    lines = done.stderr.splitlines()
    log = table / "versions" / "v1" / "run.log"
    assert lines.count(f"log: {log}") == 1
    assert [line for line in lines if not line.startswith("bulkinfer: progress ") and line != f"log: {log}"] == []
    assert len(lines) >= 3 and "generated 63" in lines[-1]
    text = log.read_text()
    assert "vLLM" in text or "vllm" in text  # the engine's lines are kept, in the log
    assert (table / "versions" / "v1" / "report.html").is_file() and (table / "versions" / "v1" / "metrics.prom").is_file()


def test_dry_run_estimate_against_the_real_run(first_run, tiny_model, tmp_path, shared_engines):
    # The dry run through the command line (its stdout is the estimate); the real run in this process, on the
    # session's shared engine: what is compared are counts and tokens, the same either way.
    _, corpus, table, _ = first_run
    estimate_file = tmp_path / "estimate.json"
    dry = _cli(*_args(corpus, table, tiny_model, "--full", "--dry_run", "--gpu_hour_price", "3", "--estimate_out", str(estimate_file)))
    assert dry.returncode == 0, dry.stderr[-3000:]
    estimate = json.loads(dry.stdout)
    assert json.loads(estimate_file.read_text()) == estimate
    assert "engine time (estimate)" in dry.stderr
    one = estimate["tables"][str(table)]
    assert sorted(p.name for p in (table / "versions").iterdir()) == ["v1"], "a dry run writes no version"
    counts = run(_args(corpus, table, tiny_model, "--full", "--run_id", "v2")[1:])["counts"]
    assert one["prompts"] == counts["generated"] == 63 and one["reused"] == counts["reused"] == 0
    progress = json.loads((table / "versions" / "v2" / "progress.json").read_text())
    assert one["prompt_tokens"] == progress["counts"]["prompt_tokens"] > 0
    # The estimate is the first run's engine seconds per prompt (its progress file) times the prompts.
    first = json.loads((table / "versions" / "v1" / "progress.json").read_text())
    per_prompt = first["engine_seconds"] / first["counts"]["generated"]
    assert per_prompt > 0 and one["estimate"]["engine_seconds"] == pytest.approx(63 * per_prompt, abs=0.05)
    assert one["estimate"]["cost"] == pytest.approx(one["estimate"]["engine_seconds"] / 3600 * 3, abs=0.01)


def test_dry_run_counts_are_the_real_runs(first_run, tiny_model, tmp_path, shared_engines):
    # The dry run and the run in this process, the run on the session's shared engine: the command line's
    # own output is what the tests above check; here the counts are compared, which are the same either way.
    root, _, table, _ = first_run
    corpus = write_corpus(tmp_path / "week2.parquet", [*QUERIES, *NEW])
    one = dry_run(_args(corpus, table, tiny_model)[1:])["tables"][str(table)]
    summary = run(_args(corpus, table, tiny_model, "--run_id", "v3")[1:])
    counts = summary["counts"]
    assert one["rows_in"] == counts["rows_in"] == len(QUERIES) + len(NEW)
    assert one["reused"] == counts["reused"] == 63
    assert one["prompts"] == counts["generated"] == 8
    assert one["prompt_too_long"] == summary["dead_letter_reasons"]["prompt_too_long"] == 1
    assert one["rows_dead_at_keys"] == summary["dead_letter_reasons"]["null_query"] + summary["dead_letter_reasons"]["empty_query"]
    assert one["keys"] == counts["keys"] + one["prompt_too_long"]
