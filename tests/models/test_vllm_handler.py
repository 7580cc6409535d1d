"""The vLLM handler on a real engine (tiny local model, CPU)."""

from __future__ import annotations

import dataclasses

import pytest

from bulkinfer.errors import EngineError, Reason
from bulkinfer.format.records import PromptRequest
from bulkinfer.models.engine import EngineConfig
from bulkinfer.models.vllm_handler import EngineHandle, LoadedEngine, VLLMHandler
from bulkinfer.tasks.prompts import render_prompt
from bulkinfer.tasks.spec import load_task

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("shared_engines")]

TASK = load_task("synonyms")


def engine_config(tiny_model):
    return EngineConfig(model=str(tiny_model), max_model_len=512, dtype="float32")


@pytest.fixture(scope="module")
def handler_and_engine(lora_engine_config):
    # No adapter here: the LoRA-capable engine runs the base model (and is started once for the handler tests).
    handler = VLLMHandler(lora_engine_config, TASK.sampling, batch_size=8)
    return handler, handler.load_model().get()


def _request(key: str) -> PromptRequest:
    return PromptRequest(key=key, query=key, prompt=render_prompt(TASK, key), source_rows=1)


def test_one_generation_per_request_in_input_order_and_deterministic(handler_and_engine):
    handler, engine = handler_and_engine
    batch = [_request(k) for k in ["covid vaccine", "cheap flights", "used cars", "vuelos baratos"]]
    first = list(handler.generate(batch, engine))
    again = list(handler.generate(list(reversed(batch)), engine))
    assert [g.request.key for g in first] == [r.key for r in batch]
    assert all(g.error_reason is None and g.output_tokens > 0 and g.prompt_tokens > 0 for g in first)
    assert [g.text for g in first] == [g.text for g in reversed(again)]


def test_prompt_over_the_context_is_reported_not_raised(handler_and_engine):
    handler, engine = handler_and_engine
    long_key = " ".join(["vaccine"] * 600)
    results = list(handler.generate([_request("flu"), _request(long_key)], engine))
    assert results[0].error_reason is None
    assert results[1].error_reason == Reason.PROMPT_TOO_LONG
    assert results[1].prompt_tokens > 512 and "model context of 512" in results[1].error_message


class _PoisonEngine:
    """The real engine, failing any batch that holds a poison prompt, the way a bad input can."""

    def __init__(self, llm, poison_ids):
        self._llm, self._poison, self.calls = llm, poison_ids, 0

    def generate(self, prompts, params, use_tqdm=False):
        self.calls += 1
        if any(p["prompt_token_ids"] == self._poison for p in prompts):
            raise RuntimeError("poisoned batch")
        return self._llm.generate(prompts, params, use_tqdm=use_tqdm)


def test_failing_batch_is_retried_then_bisected_to_the_poison_row(handler_and_engine):
    handler, engine = handler_and_engine
    batch = [_request(k) for k in ["a", "b", "poison", "c"]]
    poison_ids = engine.tokenizer(batch[2].prompt)["input_ids"]
    poisoned = dataclasses.replace(engine, llm=_PoisonEngine(engine.llm, poison_ids))
    results = list(handler.generate(batch, poisoned))
    assert [g.error_reason for g in results] == [None, None, Reason.GENERATION_FAILED, None]
    assert "poisoned batch" in results[2].error_message
    assert isinstance(poisoned, LoadedEngine) and poisoned.llm.calls >= 4


class _FailingEngine:
    """The real engine, raising a given error on every call, or returning one output too few."""

    def __init__(self, llm, error=None):
        self._llm, self._error, self.calls = llm, error, 0

    def generate(self, prompts, params, use_tqdm=False):
        self.calls += 1
        if self._error is not None:
            raise self._error
        return self._llm.generate(prompts, params, use_tqdm=use_tqdm)[:-1]


def _fatal_errors():
    import torch
    from vllm.v1.engine.exceptions import EngineDeadError

    return [EngineDeadError(), torch.OutOfMemoryError("CUDA out of memory"), MemoryError()]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["engine_dead", "device_oom", "host_oom"])
def test_a_fatal_engine_error_stops_at_once_without_bisecting(handler_and_engine, which):
    handler, engine = handler_and_engine
    error = _fatal_errors()[which]
    failing = dataclasses.replace(engine, llm=_FailingEngine(engine.llm, error))
    with pytest.raises(EngineError, match=f"cannot go on: {type(error).__name__}"):
        handler.generate([_request(k) for k in ["a", "b", "c", "d"]], failing)
    assert failing.llm.calls == 1, "a fatal error was retried or bisected"


def test_an_engine_returning_too_few_outputs_stops_the_run(handler_and_engine):
    handler, engine = handler_and_engine
    short = dataclasses.replace(engine, llm=_FailingEngine(engine.llm))
    with pytest.raises(EngineError, match="returned 3 outputs for 4 prompts"):
        handler.generate([_request(k) for k in ["a", "b", "c", "d"]], short)


def test_sampling_parameters_the_engine_refuses_stop_the_run(tiny_model, handler_and_engine):
    _, engine = handler_and_engine
    refused = VLLMHandler(engine_config(tiny_model), dataclasses.replace(TASK.sampling, stop=("",)), batch_size=8)
    with pytest.raises(EngineError, match="refused the task's sampling parameters: .*stop cannot contain an empty string"):
        refused.generate([_request("a")], engine)


def test_engine_starts_on_first_batch_not_on_load():
    starts = []
    handle = EngineHandle(lambda: starts.append(1) or "engine", lambda: starts.append(2))
    assert starts == []
    assert handle.get() == "engine" and handle.get() == "engine"
    assert starts == [1, 2]
