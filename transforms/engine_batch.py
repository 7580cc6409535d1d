"""EngineBatch: the element type of the stages around the engine, a list of requests or of generations."""

from __future__ import annotations

import pickle
from typing import Any

import apache_beam as beam


class EngineBatch(list):
    """A list of :class:`~bulkinfer.format.records.PromptRequest` or ``Generation`` that travels as one element.

    Beam samples element sizes for its metrics by encoding elements; a plain list of
    dataclasses would be pickled whole for every sampled batch (about one in ten of a
    run's thousands of rows). :class:`EngineBatchCoder` estimates a batch's size from its length instead.
    """


class EngineBatchCoder(beam.coders.Coder):
    """Pickles an :class:`EngineBatch` (when it crosses a process); estimates its size without encoding it."""

    _BYTES_PER_ITEM = 512
    """A prompt or generation with its key and text: only for Beam's size metrics."""

    def encode(self, value: EngineBatch) -> bytes:
        return pickle.dumps(list(value), protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> EngineBatch:
        return EngineBatch(pickle.loads(encoded))

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, value: Any) -> int:
        return self._BYTES_PER_ITEM * len(value)

    def to_type_hint(self) -> type:
        return EngineBatch


beam.coders.registry.register_coder(EngineBatch, EngineBatchCoder)
