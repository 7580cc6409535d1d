"""The run summary on stdout: printed for a published version and for one a gate held back."""

from __future__ import annotations

import json

import pytest

from bulkinfer.cli import print_run_summary
from bulkinfer.errors import GateError
from bulkinfer.pipelines.cache_job import run
from tests.conftest import write_corpus
from tests.fakes import FakeHandler


def test_a_version_held_back_by_a_gate_still_has_its_summary(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "queries.parquet", [None, " ", "\t"])  # no usable query: min_keys refuses it
    argv = ["--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", "fake", "--run_id", "v1"]
    with pytest.raises(GateError, match="min_keys") as failed:
        run(argv, model_handler=FakeHandler())
    assert list(failed.value.manifests) == [None]
    print_run_summary(failed.value.manifests)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["version"] == "v1" and summary["published"] is False
    assert summary["counts"]["rows_in"] == 3 and summary["counts"]["keys"] == 0
    assert not (tmp_path / "table" / "CURRENT").exists()


def test_a_published_version_says_so(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "queries.parquet", ["covid vaccine", "cheap flights"])
    argv = ["--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", "fake", "--run_id", "v1"]
    answers = {"covid vaccine": " coronavirus vaccine, covid jab", "cheap flights": " low cost flights, budget airfare"}
    manifest = run(argv, model_handler=FakeHandler(answers=answers))
    print_run_summary({None: manifest})
    summary = json.loads(capsys.readouterr().out)
    assert summary["published"] is True and summary["counts"]["keys"] == 2
