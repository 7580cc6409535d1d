"""Generate: batched generation through RunInference and an in-process engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from bulkinfer.format.records import PromptRequest
from bulkinfer.models.beam_inference import ModelHandler, RunInference
from bulkinfer.models.vllm_handler import BatchCutter
from bulkinfer.transforms.engine_batch import EngineBatch


class PromptBatches(ModelHandler):
    """A ModelHandler over whole engine batches: each element is a list of requests, answered by one list of generations.

    Wraps the job's handler (vLLM, or a stand-in) so that ``RunInference`` loads and
    shares the model as usual but passes batches through whole (``should_skip_batching``)
    and emits one element per batch, not one per prompt.
    """

    def __init__(self, handler: ModelHandler):
        """Args:
        handler: a ModelHandler from :class:`PromptRequest` to :class:`Generation`.
        """
        self._handler = handler
        self._env_vars = getattr(handler, "_env_vars", {})

    def load_model(self) -> Any:
        return self._handler.load_model()

    def run_inference(self, batch: Sequence[PromptRequest], model: Any, inference_args: Any = None) -> list[EngineBatch]:
        return [EngineBatch(self._handler.run_inference(batch, model, inference_args))]

    def should_skip_batching(self) -> bool:
        return True

    def get_num_bytes(self, batch: Sequence[PromptRequest]) -> int:
        return self._handler.get_num_bytes(batch)

    def get_metrics_namespace(self) -> str:
        return self._handler.get_metrics_namespace()

    def get_resource_hints(self) -> dict:
        return self._handler.get_resource_hints()

    def share_model_across_processes(self) -> bool:
        return self._handler.share_model_across_processes()

    def model_copies(self) -> int:
        return self._handler.model_copies()


class _CutBatches(beam.DoFn):
    """Cuts lists of requests into the handler's batches, across the lists of a bundle (as ``BatchElements`` would)."""

    def __init__(self, handler: ModelHandler):
        kwargs = handler.batch_elements_kwargs()
        self._max_size = kwargs["max_batch_size"]
        self._size = kwargs.get("element_size_fn", lambda _: 1)
        self._cutter: BatchCutter | None = None

    def start_bundle(self) -> None:
        self._cutter = BatchCutter(self._max_size, self._size)

    def process(self, requests: list[PromptRequest]) -> Iterator[EngineBatch]:
        for request in requests:
            full = self._cutter.add(request)
            if full is not None:
                yield EngineBatch(full)

    def finish_bundle(self) -> Iterator[Any]:
        rest = self._cutter.flush()
        if rest is not None:
            yield GlobalWindows.windowed_value(EngineBatch(rest))


class Generate(beam.PTransform):
    """Runs lists of :class:`PromptRequest` through the model handler in the handler's batches.

    The handler (``models.vllm_handler.VLLMHandler`` in jobs, a fake in logic tests) is
    loaded once per worker. Requests are cut into batches by the handler's own
    ``batch_elements_kwargs`` (a token budget, or a batch size), across the lists of a
    bundle; each batch is one element in and one list of ``Generation`` out, in the
    order of its requests.
    """

    def __init__(self, handler: ModelHandler):
        """Args:
        handler: a ModelHandler from PromptRequest to Generation.
        """
        super().__init__()
        self._handler = handler

    def expand(self, requests: beam.PCollection) -> beam.PCollection:
        batches = requests | "CutBatches" >> beam.ParDo(_CutBatches(self._handler)).with_output_types(EngineBatch)
        return batches | "RunInference" >> RunInference(PromptBatches(self._handler)).with_output_types(EngineBatch)
