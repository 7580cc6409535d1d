"""Generate: batched generation through RunInference and an in-process engine."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference


class Generate(beam.PTransform):
    """Runs every :class:`PromptRequest` through the model handler, in batches.

    The handler (``models.vllm_handler.VLLMHandler`` in jobs, a fake in logic
    tests) is loaded once per worker and returns one ``Generation`` per request.
    """

    def __init__(self, handler: ModelHandler):
        """Args:
        handler: a ModelHandler from PromptRequest to Generation.
        """
        super().__init__()
        self._handler = handler

    def expand(self, requests: beam.PCollection) -> beam.PCollection:
        return requests | "RunInference" >> RunInference(self._handler)
