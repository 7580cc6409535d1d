"""A fake ModelHandler for pipeline logic tests: deterministic, instant, no engine."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from bulkinfer.errors import Reason
from bulkinfer.format.records import METRICS_NAMESPACE, Generation, PromptRequest


class FakeModel:
    """Stands where the engine would; Beam keeps a weak reference to the loaded model."""


class FakeHandler(ModelHandler[PromptRequest, Generation, FakeModel]):
    """Answers every prompt from a fixed rule; counts generations in the same metric as the real handler.

    ``answers`` maps a key to the raw text to return; other keys get
    ``" <key> alt, other <key>"`` (or, with ``answer_prompt_lines``, the number of
    line breaks in the prompt). Keys in ``too_long`` and ``failing`` come back as
    ``prompt_too_long`` and ``generation_failed``, the way the real handler reports them.
    """

    def __init__(
        self,
        answers: dict[str, str] | None = None,
        too_long: Iterable[str] = (),
        failing: Iterable[str] = (),
        answer_prompt_lines: bool = False,
    ):
        super().__init__(min_batch_size=4, max_batch_size=4)
        self._answers = dict(answers or {})
        self._too_long = frozenset(too_long)
        self._failing = frozenset(failing)
        self._answer_prompt_lines = answer_prompt_lines
        self._generated = Metrics.counter(METRICS_NAMESPACE, "prompts_generated")

    def load_model(self) -> FakeModel:
        return FakeModel()

    def run_inference(self, batch: Sequence[PromptRequest], model: FakeModel, inference_args: Any = None) -> list[Generation]:
        out = []
        for request in batch:
            if request.key in self._too_long:
                out.append(Generation(request=request, prompt_tokens=9999, error_reason=Reason.PROMPT_TOO_LONG, error_message="too long"))
                continue
            if request.key in self._failing:
                out.append(Generation(request=request, error_reason=Reason.GENERATION_FAILED, error_message="engine error: poisoned"))
                continue
            text = self._answers.get(request.key, f" {request.key} alt, other {request.key}")
            if self._answer_prompt_lines:
                text = f" lines {request.prompt.count(chr(10))}"
            out.append(
                Generation(request=request, text=text, prompt_tokens=len(request.prompt.split()), output_tokens=3, finish_reason="stop")
            )
            self._generated.inc()
        return out
