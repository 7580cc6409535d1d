"""CountProgress: counts the elements passing a point of the job into the run's progress files."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

from bulkinfer.format.progress import COUNTS, process_counts
from bulkinfer.format.records import Generation


class _Count(beam.DoFn):
    def __init__(self, directory: str, name: str):
        self._directory = directory
        self._name = name
        self._counts: Any = None

    def setup(self) -> None:
        self._counts = process_counts(self._directory)

    def process(self, element: Any) -> Iterator[Any]:
        if isinstance(element, pa.Table):  # a table of rows counts its rows
            self._counts.add(self._name, element.num_rows)
        elif isinstance(element, list):  # a batch of generations (or requests) counts each
            for item in element:
                self._count(item)
        else:
            self._count(element)
        yield element

    def _count(self, item: Any) -> None:
        if isinstance(item, Generation) and not item.error_reason:
            self._counts.add(self._name, 1, prompt_tokens=item.prompt_tokens, output_tokens=item.output_tokens)
        else:
            self._counts.add(self._name)

    def finish_bundle(self) -> None:
        self._counts.flush()


class CountProgress(beam.PTransform):
    """Passes every element through unchanged and counts it under ``name`` for the live progress display.

    A ``pyarrow.Table`` counts as its rows, a list as its items. Generations also add
    their prompt and output tokens (and to the token-length histograms). Counts go to
    one file per worker process under ``directory`` (:mod:`bulkinfer.format.progress`),
    a local directory: the display reads it from the main process, so this only
    counts on runners whose workers share the host.
    """

    def __init__(self, directory: str, name: str):
        """Args:
        directory: the run's progress directory.
        name: one of ``bulkinfer.format.progress.COUNTS``.
        """
        super().__init__()
        if name not in COUNTS:
            raise ValueError(f"name must be one of {', '.join(COUNTS)}, got {name!r}")
        self._directory = directory
        self._name = name

    def expand(self, elements: beam.PCollection) -> beam.PCollection:
        # Passed through as they came: the same element type, so the same coder.
        return elements | "Count" >> beam.ParDo(_Count(self._directory, self._name)).with_output_types(elements.element_type)
