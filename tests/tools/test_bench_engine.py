"""``bulkinfer bench`` end to end on the tiny model: the job and its engine stage (one engine start)."""

from __future__ import annotations

import pytest

from bulkinfer.tools.bench import render_table, run_bench

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("shared_engines")]


def test_bench_runs_the_job_and_its_engine_stage_on_equal_outputs(tiny_model, tmp_path):
    # The session's tiny model is the one the CPU bench would build for itself (models.tiny).
    result = run_bench("cpu", prompts=8, only=("c", "d"), repeats=1, model=str(tiny_model), workdir=str(tmp_path))
    variants = result["variants"]
    assert sorted(variants) == ["c", "d"]
    for v in variants.values():
        assert v["runs"] and v["skipped"] is None
        assert [(r["prompts"], r["output_tokens"]) for r in v["runs"]] == [(8, 8 * 32)], "ignore_eos: 32 tokens each"
    assert result["workload"]["shared_prefix_tokens"] >= 200 and result["ratios"]["c_over_d"] > 0
    assert "c/d" in render_table(result)
