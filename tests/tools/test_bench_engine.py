"""``bulkinfer bench`` end to end on the tiny model: the job and its engine stage (one engine start)."""

from __future__ import annotations

import pytest

from bulkinfer.tools.bench import render_table, run_bench

pytestmark = pytest.mark.engine


def test_bench_runs_the_job_and_its_engine_stage_on_equal_outputs(tmp_path):
    result = run_bench("cpu", prompts=8, only=("c", "d"), repeats=1, workdir=str(tmp_path))
    variants = result["variants"]
    assert sorted(variants) == ["c", "d"]
    for v in variants.values():
        assert v["runs"] and v["skipped"] is None
        assert [(r["prompts"], r["output_tokens"]) for r in v["runs"]] == [(8, 8 * 32)], "ignore_eos: 32 tokens each"
    assert result["workload"]["shared_prefix_tokens"] >= 200 and result["ratios"]["c_over_d"] > 0
    assert "c/d" in render_table(result)
