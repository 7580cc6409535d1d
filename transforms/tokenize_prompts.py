"""TokenizePrompts: the model's token ids for every prompt, ahead of the engine stage."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import apache_beam as beam

from bulkinfer.format.records import PromptRequest
from bulkinfer.transforms.engine_batch import EngineBatch


class TokenizePrompts(beam.PTransform):
    """Attaches ``prompt_token_ids`` to every :class:`PromptRequest` of the request lists, tokenised in batches.

    Tokenising here, not inside the engine call, takes the tokenizer off the engine
    stage's critical path (a runner may run it on other threads or workers) and gives
    the token-budget batching of ``Generate`` exact prompt lengths. Chat turns go
    through the tokenizer's chat template, as the model handler would render them.
    """

    def __init__(self, model: str, batch_size: int = 512):
        """Args:
        model: the model directory (or hub id) whose tokenizer the engine uses.
        batch_size: prompts per tokenizer call.
        """
        super().__init__()
        self._model = model
        self._batch_size = batch_size

    def expand(self, requests: beam.PCollection) -> beam.PCollection:
        return requests | "Tokenize" >> beam.ParDo(_TokenizeBatch(self._model, self._batch_size)).with_output_types(EngineBatch)


class _TokenizeBatch(beam.DoFn):
    def __init__(self, model: str, batch_size: int):
        self._model = model
        self._batch_size = batch_size
        self._tokenizer: Any = None

    def setup(self) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ImportError("tokenising prompts needs transformers: pip install 'bulkinfer[cpu]' or 'bulkinfer[gpu]'") from e
        self._tokenizer = AutoTokenizer.from_pretrained(self._model)

    def process(self, requests: list[PromptRequest]) -> Iterator[EngineBatch]:
        from bulkinfer.models.vllm_handler import tokenize_requests

        out = EngineBatch()
        for start in range(0, len(requests), self._batch_size):
            batch = requests[start : start + self._batch_size]
            out.extend(
                replace(request, prompt_token_ids=tuple(ids))
                for request, ids in zip(batch, tokenize_requests(self._tokenizer, batch), strict=True)
            )
        yield out
