"""A fake ModelHandler for pipeline logic tests: deterministic, instant, no engine."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.metrics import Metrics

from bulkinfer.errors import Reason
from bulkinfer.format.records import METRICS_NAMESPACE, Generation, PromptRequest
from bulkinfer.models.beam_inference import ModelHandler


class FakeModel:
    """Stands where the engine would; Beam keeps a weak reference to the loaded model."""


class FakeHandler(ModelHandler[PromptRequest, Generation, FakeModel]):
    """Answers every prompt from a fixed rule; counts generations in the same metric as the real handler.

    ``answers`` maps a key, or a (key, language) pair (looked up first), to the raw text
    to return, or to a list of texts (several answers, as under ``sampling.n`` > 1);
    other keys get ``" <key> alt, other <key>"`` (or, with ``answer_prompt_lines``, the
    number of line breaks in the prompt), and with ``n`` > 1 that many answers, the i-th
    (from 1) adding ``"<key> variant <i>"``. Keys in ``too_long`` and ``failing`` (or
    (key, language) pairs) come back as ``prompt_too_long`` and ``generation_failed``, the
    way the real handler reports them.
    """

    def __init__(
        self,
        answers: dict[Any, str | list[str]] | None = None,
        too_long: Iterable[Any] = (),
        failing: Iterable[Any] = (),
        answer_prompt_lines: bool = False,
        n: int = 1,
    ):
        super().__init__(min_batch_size=4, max_batch_size=4)
        self._answers = dict(answers or {})
        self._too_long = frozenset(too_long)
        self._failing = frozenset(failing)
        self._answer_prompt_lines = answer_prompt_lines
        self._n = n
        self._generated = Metrics.counter(METRICS_NAMESPACE, "prompts_generated")

    def load_model(self) -> FakeModel:
        return FakeModel()

    def run_inference(self, batch: Sequence[PromptRequest], model: FakeModel, inference_args: Any = None) -> list[Generation]:
        out = []
        for request in batch:
            pair = (request.key, request.language)
            if request.key in self._too_long or pair in self._too_long:
                out.append(Generation(request=request, prompt_tokens=9999, error_reason=Reason.PROMPT_TOO_LONG, error_message="too long"))
                continue
            if request.key in self._failing or pair in self._failing:
                out.append(Generation(request=request, error_reason=Reason.GENERATION_FAILED, error_message="engine error: poisoned"))
                continue
            answer = self._answers.get(pair, self._answers.get(request.key))
            if answer is None:
                answer = f" {request.key} alt, other {request.key}"
                if self._answer_prompt_lines:
                    answer = f" lines {request.prompt.count(chr(10))}"
                if self._n > 1:
                    answer = [answer] + [f"{answer}, {request.key} variant {i}" for i in range(1, self._n)]
            texts = tuple(answer) if isinstance(answer, list) else (answer,)
            out.append(
                Generation(
                    request=request,
                    text=texts[0],
                    texts=texts if len(texts) > 1 else (),
                    prompt_tokens=len(request.prompt.split()),
                    output_tokens=3 * len(texts),
                    finish_reason="stop",
                )
            )
            self._generated.inc()
        return out
