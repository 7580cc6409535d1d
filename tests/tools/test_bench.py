"""The throughput bench's pure parts: workload, result medians and ratios, the table."""

from __future__ import annotations

import pytest

from bulkinfer.errors import ConfigError
from bulkinfer.keys import normalize_key
from bulkinfer.tasks.prompts import render_prompt
from bulkinfer.tasks.spec import task_from_dict
from bulkinfer.tools.bench import Measure, VariantResult, bench_keys, render_table, summarise, task_spec, word


def test_words_and_keys_are_distinct_and_already_normalised():
    assert len({word(n) for n in range(5000)}) == 5000
    keys = bench_keys(300)
    assert keys and len(set(keys)) == 300
    assert all(normalize_key(k) == k for k in keys), "the job's keys are the prompts' queries, unchanged"


def test_task_spec_reaches_the_shared_prefix_and_forces_fixed_length_outputs():
    count = lambda text: len(text.split())  # noqa: E731 - a stand-in tokenizer: one token per word
    spec = task_spec(count, prefix_tokens=120)
    task = task_from_dict(spec)
    prompt = render_prompt(task, "some query")
    shared = prompt[: -len("query: some query\nsynonyms:")]
    assert 120 <= count(shared) < 120 + 40
    assert all(render_prompt(task, k).startswith(shared) for k in bench_keys(5))
    assert task.sampling.ignore_eos and task.sampling.max_tokens == 32 and task.sampling.stop == ()


def _result(name: str, *rates: float, tokens_per_prompt: int = 32) -> VariantResult:
    return VariantResult(name, name, runs=[Measure(seconds=100 / r, prompts=100, output_tokens=100 * tokens_per_prompt) for r in rates])


def test_summary_takes_medians_and_ratios_to_raw_vllm():
    summary = summarise(
        [_result("a", 100, 90, 110), _result("b", 30, 40, 35), _result("c", 95, 99, 97), _result("d", 105, 100, 110)],
        {"device": "cpu"},
    )
    v = summary["variants"]
    assert v["a"]["prompts_per_s"] == 100 and v["a"]["ratio_to_a"] == 1.0
    assert v["c"]["prompts_per_s"] == 97 and v["c"]["output_tokens_per_s"] == 97 * 32
    assert v["b"]["ratio_to_a"] == 0.35
    assert summary["ratios"] == {"c_over_a": 0.97, "c_over_b": round(97 / 35, 3), "c_over_d": round(97 / 105, 3)}
    assert summary["device"] == "cpu" and len(v["d"]["runs"]) == 3


def test_a_skipped_variant_is_reported_with_its_reason_and_no_ratio():
    b = VariantResult("b", "Beam", skipped="RuntimeError: no server")
    summary = summarise([_result("a", 50), b, _result("c", 60)], {})
    assert summary["variants"]["b"]["prompts_per_s"] is None and summary["ratios"]["c_over_b"] is None
    table = render_table(summary)
    assert "skipped" in table and "no server" in table and "c/a 1.200" in table


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"only": ["e"]}, "--only takes"), ({"device": "tpu"}, "--device must be"), ({"prompts": 0}, "--prompts and --repeats")],
)
def test_bad_bench_flags_fail_before_any_work(kwargs, match):
    from bulkinfer.tools.bench import run_bench

    with pytest.raises(ConfigError, match=match):
        run_bench(**kwargs)
