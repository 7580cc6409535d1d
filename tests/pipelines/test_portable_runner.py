"""The cache job on Beam's PortableRunner, its stages in SDK worker processes of a real worker pool.

This is how Flink, Spark and Kubernetes deployments run Python: a job service hands
the stages to worker processes that a worker pool starts beside it. Here the job
service runs in the test's process (``--job_endpoint embed``) and the pool on this
machine; the workers share neither the test's process nor its working directory.
The engine is the tests' fake handler (logic); ``test_portable_runner_engine.py``
runs the real one.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bulkinfer.cli import main
from bulkinfer.errors import ConfigError
from bulkinfer.format import layout
from bulkinfer.pipelines.cache_job import run
from bulkinfer.testing import beam_worker_pool, free_port, group_members
from tests.conftest import portable_flags, task_allowing_failures, write_corpus
from tests.fakes import FakeHandler

QUERIES = [
    "Covid Vaccine",
    "  covid   VACCINE ",
    "cheap flights",
    "Cheap Flights",
    "used cars",
    None,
    "",
    "poisoned query",
    "a very long query",
]
"""Duplicates to group, a null and an empty row, a key the engine fails on and one over the context."""

# Written by the run, so never equal between two runs: when and how long, and where the input was named from.
_RUN_FIELDS = ("started_at", "finished_at", "wall_seconds", "input")


def _handler() -> FakeHandler:
    return FakeHandler(failing=["poisoned query"], too_long=["a very long query"])


def _table(vdir: Path, kind: str) -> list[dict[str, Any]]:
    rows = layout.read_shards(str(vdir), kind)
    assert rows is not None and rows.num_rows, f"no {kind} rows in {vdir}"
    return sorted(rows.to_pylist(), key=lambda r: (r["key"] or "", r.get("reason") or "", r.get("row") or ""))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, worker_pool: Any) -> dict[str, Any]:
    """The same corpus through the DirectRunner and the PortableRunner, then a portable rerun with one new query.

    The portable runs name their input and table relative to the test's working
    directory, which is not the workers'.
    """
    root = tmp_path_factory.mktemp("portable")
    task = task_allowing_failures(root, "synonyms")
    corpus = write_corpus(root / "queries.parquet", QUERIES)
    write_corpus(root / "more.parquet", [*QUERIES, "lemon pie"])
    common = ["--task", task, "--model", "fake-model"]
    direct = run([*common, "--input", str(corpus), "--output", str(root / "direct"), "--run_id", "r1"], model_handler=_handler())
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        flags = [*common, *portable_flags(worker_pool), "--output", "portable"]
        started = time.perf_counter()
        portable = run([*flags, "--input", "queries.parquet", "--run_id", "r1"], model_handler=_handler())
        portable_s = time.perf_counter() - started
        rerun = run([*flags, "--input", "more.parquet", "--run_id", "r2"], model_handler=_handler())
    return {"root": root, "direct": direct, "portable": portable, "rerun": rerun, "portable_s": portable_s}


def test_portable_runner_writes_the_direct_runners_table(runs):
    root = runs["root"]
    direct, portable = (root / name / "versions" / "r1" for name in ("direct", "portable"))
    assert _table(portable, layout.PREDICTIONS) == _table(direct, layout.PREDICTIONS)
    assert _table(portable, layout.DEAD_LETTER) == _table(direct, layout.DEAD_LETTER)
    same = {k: v for k, v in runs["direct"].items() if k not in _RUN_FIELDS}
    assert {k: v for k, v in runs["portable"].items() if k not in _RUN_FIELDS} == same
    # The counters the manifest reads come back from the workers through the job service.
    assert runs["portable"]["counts"]["generated"] == 3 and runs["portable"]["counts"]["rows_in"] == len(QUERIES)
    assert runs["portable"]["dead_letter_reasons"] == {"empty_query": 1, "generation_failed": 1, "null_query": 1, "prompt_too_long": 1}
    assert layout.read_current(str(root / "portable")) == "r2"


def test_portable_rerun_reuses_the_published_answers(runs):
    counts = runs["rerun"]["counts"]
    assert counts["rows_in"] == len(QUERIES) + 1
    assert (counts["generated"], counts["reused"], counts["keys"]) == (1, 3, 4)
    assert counts["rows_in_table"] + counts["rows_dead"] == counts["rows_in"]
    rows = {r["key"]: r for r in _table(runs["root"] / "portable" / "versions" / "r2", layout.PREDICTIONS)}
    assert rows["lemon pie"]["run_id"] == "r2"
    assert {rows[k]["run_id"] for k in ("covid vaccine", "cheap flights", "used cars")} == {"r1"}


def test_portable_progress_counts_reach_the_launcher(runs):
    """Workers on this machine write the live progress counters where the launcher reads them."""
    portable, direct = (
        json.loads((runs["root"] / name / "versions" / "r1" / "progress.json").read_text()) for name in ("portable", "direct")
    )
    assert portable["counts"]["rows_read"] == len(QUERIES)
    assert portable["counts"] == direct["counts"]


@pytest.mark.parametrize("which", ["pool", "job_endpoint"])
def test_unreachable_runner_is_a_one_line_error(tmp_path, capsys, which):
    corpus = write_corpus(tmp_path / "queries.parquet", ["cheap flights"])
    address = f"localhost:{free_port()}"
    if which == "pool":
        flags = ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "EXTERNAL", "--environment_config", address]
        expected = f"--environment_config {address}: no SDK worker pool answers there"
    else:
        flags = ["--runner", "PortableRunner", "--job_endpoint", address]
        expected = f"--job_endpoint {address}: no Beam job service answers there"
    argv = ["--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", "fake-model", *flags]
    with pytest.raises(ConfigError, match=expected):
        run(argv, model_handler=FakeHandler())
    assert not (tmp_path / "table" / "versions").exists(), "nothing may start before the runner answers"


def test_cli_exits_2_naming_the_worker_pool_to_start(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "queries.parquet", ["cheap flights"])
    model = tmp_path / "model"  # the command line checks the model is a model directory before the runner
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    port = free_port()
    code = main(
        ["run", "--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", str(model)]
        + [
            "--runner",
            "PortableRunner",
            "--job_endpoint",
            "embed",
            "--environment_type",
            "EXTERNAL",
            "--environment_config",
            f"localhost:{port}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"bulkinfer: error: --environment_config localhost:{port}: no SDK worker pool answers there")
    assert f"worker_pool_main --service_port {port}" in err[-1] and "Traceback" not in "\n".join(err)


def test_worker_pool_that_does_not_start_fails_fast_and_leaves_nothing(tmp_path):
    started = time.monotonic()
    # An interpreter that cannot even start (no standard library under PYTHONHOME): the pool exits at once.
    with pytest.raises(RuntimeError, match=r"Beam SDK worker pool .* exited with 1 on port \d+; its log .*pool.log ends"):
        with beam_worker_pool(tmp_path, env={"PYTHONHOME": str(tmp_path / "nowhere")}, start_timeout_s=30):
            pass
    assert time.monotonic() - started < 20


def test_worker_pool_stops_with_its_workers(tmp_path):
    with beam_worker_pool(tmp_path) as pool:
        assert pool.workers() == []
        pid = pool.pid
    assert group_members(pid) == [], "the pool or one of its workers outlived the fixture"


def test_relative_paths_are_made_absolute_for_the_workers(tmp_path, monkeypatch):
    """A worker does not share the launcher's working directory: the stages get paths it can reach."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from bulkinfer.pipelines.cache_job import CacheJobOptions
    from bulkinfer.pipelines.plan import for_workers, plan_tables

    write_corpus(tmp_path / "queries.parquet", ["cheap flights"])
    monkeypatch.chdir(tmp_path)
    argv = ["--task", "synonyms", "--input", "queries.parquet", "--output", "table", "--model", "m", "--run_id", "r1"]
    (plan,) = plan_tables(PipelineOptions(argv).view_as(CacheJobOptions), real_engine=False)
    assert plan.output == "table", "the table keeps the name it was given (summaries, metrics, reports)"
    staged = for_workers(plan)
    assert staged.input == str(tmp_path / "queries.parquet")
    assert (staged.output, staged.vdir) == (str(tmp_path / "table"), str(tmp_path / "table" / "versions" / "r1"))
    assert for_workers(dataclasses.replace(plan, output="gs://b/t")).output == "gs://b/t"


def test_engines_per_gpu_on_the_embedded_job_service_is_refused(tmp_path):
    """Beam's embedded job service starts one worker per job: N engines cannot be had that way."""
    corpus = write_corpus(tmp_path / "queries.parquet", ["cheap flights"])
    argv = ["--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", "fake-model"]
    with pytest.raises(ConfigError, match="--engines_per_gpu 2 needs that many worker processes, but --job_endpoint embed runs one"):
        run([*argv, "--runner", "PortableRunner", "--job_endpoint", "embed", "--engines_per_gpu", "2"], model_handler=FakeHandler())


def test_worker_pool_dies_with_a_killed_test_run(tmp_path):
    """A test run killed outright (no fixture teardown) leaves no worker pool behind."""
    script = "import sys, time\nfrom bulkinfer.testing import beam_worker_pool\n"
    script += "with beam_worker_pool(sys.argv[1]) as pool:\n    print(pool.pid, flush=True)\n    time.sleep(300)\n"
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        pool_pid = int(holder.stdout.readline())
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 20
    while group_members(pool_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_members(pool_pid) == []
