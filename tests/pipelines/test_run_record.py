"""What a run leaves beside its manifest: progress figures, Prometheus metrics and the HTML report."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bulkinfer.errors import GateError
from bulkinfer.format import layout
from bulkinfer.pipelines.cache_job import run
from tests.conftest import write_corpus
from tests.fakes import FakeHandler

QUERIES = ["Covid Vaccine", "  covid   VACCINE ", "cheap flights", "used cars", None, " "] + [f"query {n}" for n in range(40)]


def _job(tmp_path: Path, run_id: str, *extra: str, queries=QUERIES, handler=None, task="synonyms") -> dict:
    corpus = write_corpus(tmp_path / f"corpus-{run_id}.parquet", queries)
    argv = ["--task", task, "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", "fake", "--run_id", run_id, *extra]
    return run(argv, model_handler=handler or FakeHandler())


def _metrics(path: Path) -> dict[tuple[str, tuple], float]:
    families = text_string_to_metric_families(path.read_text())
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("table", "task")))): s.value
        for f in families
        for s in f.samples
    }


def test_progress_counts_match_the_manifest(tmp_path):
    _job(tmp_path, "r1")
    manifest = _job(tmp_path, "r2", queries=[*QUERIES, "new one", "new two"])
    vdir = tmp_path / "table" / "versions" / "r2"
    progress = json.loads((vdir / "progress.json").read_text())
    counts, expected = progress["counts"], manifest["counts"]
    assert counts["rows_read"] == expected["rows_in"] == len(QUERIES) + 2
    assert counts["keys"] == expected["keys"] == 45  # every key here has a prediction
    assert counts["reused"] == expected["reused"] == 43
    assert counts["to_generate"] == counts["generated"] == expected["generated"] == 2
    assert counts["dead_lettered"] == expected["dead_letter_records"] == 2
    assert sum(progress["prompt_token_hist"]) == 2 and progress["rates"]["prompts_per_second"] > 0


def test_metrics_file_for_the_textfile_collector(tmp_path):
    collector = tmp_path / "node-exporter"
    _job(tmp_path, "r1", "--metrics_dir", str(collector))
    in_version = tmp_path / "table" / "versions" / "r1" / "metrics.prom"
    metrics = _metrics(in_version)
    assert metrics[("bulkinfer_run_rows", (("count", "rows_in"),))] == len(QUERIES)
    assert metrics[("bulkinfer_run_rows", (("count", "generated"),))] == 43
    assert metrics[("bulkinfer_run_dead_lettered_rows", (("reason", "empty_query"),))] == 1
    assert metrics[("bulkinfer_run_quality", (("measure", "valid_rate"),))] == 1.0
    assert metrics[("bulkinfer_run_gates_passed", ())] == 1.0
    assert metrics[("bulkinfer_run_duration_seconds", ())] > 0
    assert metrics[("bulkinfer_run_info", (("model", "fake"), ("version", "r1")))] == 1.0
    assert sorted(p.name for p in collector.iterdir()) == ["bulkinfer_table.prom"]  # no temporary file left
    assert (collector / "bulkinfer_table.prom").read_text() == in_version.read_text()


def _gated_spec(tmp_path: Path) -> str:
    path = tmp_path / "task.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: synonyms
            output: list
            examples:
              - {input: laptop bag, output: "notebook bag, laptop case"}
            gates:
              max_churn_rate: 0.5
            """
        )
    )
    return str(path)


def test_a_failed_gate_still_leaves_report_and_metrics(tmp_path):
    task = _gated_spec(tmp_path)
    _job(tmp_path, "r1", task=task)
    changed = FakeHandler(answers={f"query {n}": " something else" for n in range(40)})
    with pytest.raises(GateError, match="max_churn_rate"):
        _job(tmp_path, "r2", "--full", task=task, handler=changed)
    vdir = tmp_path / "table" / "versions" / "r2"
    assert _metrics(vdir / "metrics.prom")[("bulkinfer_run_gates_passed", ())] == 0.0
    report = (vdir / "report.html").read_text()
    assert "gates failed: not published" in report
    # Churn examples: the changed answers, before and after.
    assert "<td>query 0</td><td>query 0 alt, other query 0</td><td>something else</td>" in report


def test_multi_processing_workers_are_counted_together(tmp_path):
    workers = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    manifest = _job(tmp_path, "r1", *workers)
    progress = json.loads((tmp_path / "table" / "versions" / "r1" / "progress.json").read_text())
    assert progress["processes"] >= 2, "counts of worker processes, not of the main process"
    assert progress["counts"]["rows_read"] == manifest["counts"]["rows_in"]
    assert progress["counts"]["generated"] == manifest["counts"]["generated"] == 43
    assert layout.read_current(str(tmp_path / "table")) == "r1"
