"""Token-budget batching and prefix-sorted submission in the vLLM handler (no engine)."""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from bulkinfer.format.records import PromptRequest
from bulkinfer.models.engine import EngineConfig
from bulkinfer.models.vllm_handler import DEFAULT_MAX_BATCH_TOKENS, LoadedEngine, VLLMHandler, batches_of, request_tokens
from bulkinfer.tasks.spec import SamplingSpec

SAMPLING = SamplingSpec(max_tokens=10)


def _request(key: str, ids: tuple[int, ...] = (), prompt: str = "") -> PromptRequest:
    return PromptRequest(key=key, query=key, prompt=prompt or key, source_rows=1, prompt_token_ids=ids)


def test_request_weight_is_prompt_tokens_plus_max_tokens():
    assert request_tokens(10, _request("a", ids=(1, 2, 3))) == 13
    assert request_tokens(10, _request("a", prompt="x" * 40)) == 11 + 10, "untokenised: a token per 4 characters"


@pytest.mark.parametrize(
    ("sizes", "budget", "expected"),
    [
        ([3, 3, 3, 3], 6, [[0, 1], [2, 3]]),
        ([3, 3, 3, 3], 7, [[0, 1], [2, 3]]),
        ([5, 1, 9, 2], 6, [[0, 1], [2], [3]]),
        ([1], 100, [[0]]),
        ([], 10, []),
    ],
)
def test_batches_follow_beams_batch_elements_rule(sizes, budget, expected):
    assert batches_of(list(range(len(sizes))), budget, lambda i: sizes[i]) == expected


def test_beams_batch_elements_keeps_the_handlers_token_budget():
    handler = VLLMHandler(EngineConfig(model="m"), SAMPLING, max_batch_tokens=40)
    requests = [_request(f"k{i}", ids=tuple(range(5 + i % 3))) for i in range(12)]
    assert [len(b) for b in handler.batches(requests)] == [2] * 6

    def check(batches):
        assert batches, "no batches"
        assert sorted(r.key for b in batches for r in b) == sorted(r.key for r in requests)
        assert all(b and sum(request_tokens(10, r) for r in b) <= 40 for b in batches)

    with TestPipeline() as p:
        batches = p | beam.Create(requests) | beam.BatchElements(**handler.batch_elements_kwargs())
        assert_that(batches, check)


def test_default_batching_is_by_token_budget_and_batch_size_still_counts_rows():
    by_tokens = VLLMHandler(EngineConfig(model="m"), SAMPLING).batch_elements_kwargs()
    assert by_tokens["max_batch_size"] == DEFAULT_MAX_BATCH_TOKENS and "element_size_fn" in by_tokens
    by_rows = VLLMHandler(EngineConfig(model="m"), SAMPLING, batch_size=8).batch_elements_kwargs()
    assert by_rows == {"min_batch_size": 8, "max_batch_size": 8}


@dataclass
class _Completion:
    text: str
    token_ids: list[int]
    finish_reason: str = "length"


@dataclass
class _Output:
    outputs: list[_Completion]


class _EchoLLM:
    """Answers each prompt with its own first token id as text; records what it was sent, in order."""

    def __init__(self):
        self.sent: list[list[int]] = []

    def generate(self, prompts, params, use_tqdm=False):
        self.sent = [p["prompt_token_ids"] for p in prompts]
        return [_Output([_Completion(text=str(p["prompt_token_ids"]), token_ids=[7])]) for p in prompts]


def test_prompts_go_to_the_engine_grouped_by_prefix_and_come_back_in_input_order():
    handler = VLLMHandler(EngineConfig(model="m"), SAMPLING)
    ids = [(9, 1, 5), (2, 8), (9, 1, 2), (2, 3), (9, 0)]
    llm = _EchoLLM()
    engine = LoadedEngine(llm=llm, tokenizer=None, max_model_len=100)
    results = handler.generate([_request(f"k{i}", ids=t) for i, t in enumerate(ids)], engine)
    assert llm.sent == sorted(list(t) for t in ids)
    assert [g.request.key for g in results] == [f"k{i}" for i in range(len(ids))]
    assert [g.text for g in results] == [str(list(t)) for t in ids]
    assert all(g.prompt_tokens == len(t) for g, t in zip(results, ids, strict=True))
