"""The dry run's counts and profiles, without an engine (the model's real tokenizer; a fake handler for the real runs)."""

from __future__ import annotations

import json

import pytest

from bulkinfer.errors import ConfigError
from bulkinfer.pipelines.cache_job import run
from bulkinfer.tools.dry_run import dry_run, load_profile, render_estimate
from tests.conftest import write_corpus
from tests.fakes import FakeHandler

LONG = " ".join(["vaccine"] * 700)
WEEK1 = ["Covid Vaccine", "covid   vaccine", "cheap flights", None, " "] + [f"query {n}" for n in range(30)]
WEEK2 = [*WEEK1[5:], "new one", "new two", "new three", LONG, "", "Cheap Flights"]


def _argv(tmp_path, model, queries, name, *extra):
    corpus = write_corpus(tmp_path / f"{name}.parquet", queries)
    return [
        "--task",
        "synonyms",
        "--input",
        str(corpus),
        "--output",
        str(tmp_path / "table"),
        "--model",
        str(model),
        "--max_model_len",
        "512",
        *extra,
    ]


def test_counts_match_the_run_and_nothing_is_written(tiny_model, tmp_path):
    run(_argv(tmp_path, tiny_model, WEEK1, "w1", "--run_id", "r1"), model_handler=FakeHandler())
    before = sorted(p.name for p in (tmp_path / "table").rglob("*"))
    estimate = dry_run(_argv(tmp_path, tiny_model, WEEK2, "w2", "--gpu_hour_price", "2"))
    assert sorted(p.name for p in (tmp_path / "table").rglob("*")) == before, "a dry run writes nothing to the table"
    one = estimate["tables"][str(tmp_path / "table")]
    assert one["rows_in"] == len(WEEK2) and one["rows_dead_at_keys"] == 1
    assert one["keys"] == 30 + 4 + 1  # 30 queries, 3 new ones and the long one; "Cheap Flights" is an old key
    assert one["reused"] == 31 and one["to_generate"] == 4 and one["prompt_too_long"] == 1 and one["prompts"] == 3
    assert 0 < one["prompt_tokens"] <= 3 * one["max_prompt_tokens"]
    manifest = run(_argv(tmp_path, tiny_model, WEEK2, "w2", "--run_id", "r2"), model_handler=FakeHandler(too_long=[LONG]))
    assert manifest["counts"]["reused"] == one["reused"]
    assert manifest["counts"]["generated"] == one["prompts"]
    assert manifest["dead_letter_reasons"]["prompt_too_long"] == one["prompt_too_long"]
    assert manifest["counts"]["rows_in"] == one["rows_in"]
    # r1's progress.json is the profile: its engine seconds per generated prompt
    profile = estimate["tables"][str(tmp_path / "table")]["estimate"]["profile"]
    assert profile["source"] == f"{tmp_path / 'table'} version r1" and profile["seconds_per_prompt"] > 0
    assert "prompts to the engine" in render_estimate(estimate)


def test_sample_is_the_runs_sample(tiny_model, tmp_path):
    one = dry_run(_argv(tmp_path, tiny_model, WEEK1, "w1", "--sample", "7"))["tables"][str(tmp_path / "table")]
    manifest = run(_argv(tmp_path, tiny_model, WEEK1, "w1", "--sample", "7", "--run_id", "s1"), model_handler=FakeHandler())
    assert one["keys"] == 7 and one["to_generate"] == manifest["counts"]["generated"] == 7
    assert one["rows_not_sampled"] == manifest["counts"]["rows_not_sampled"]
    assert one["estimate"]["profile"] is None  # no published run yet


def test_profile_from_a_bench_result(tmp_path):
    bench = tmp_path / "w1.json"
    bench.write_text(json.dumps({"variants": {"c": {"prompts_per_s": 500.0, "output_tokens_per_s": 16000.0}}}))
    profile = load_profile(str(bench))
    assert profile.seconds_per_prompt == pytest.approx(0.002) and profile.output_tokens_per_prompt == pytest.approx(32.0)


def test_a_file_that_is_no_bench_result_is_a_user_error(tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text('{"rows": 3}')
    with pytest.raises(ConfigError, match=r"--throughput .*other.json is not a `bulkinfer bench --out` result"):
        load_profile(str(bad))


def test_negative_price_is_refused(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match=r"--gpu_hour_price must be >= 0, got -1.0"):
        dry_run(_argv(tmp_path, tiny_model, WEEK1, "w1", "--gpu_hour_price", "-1"))
