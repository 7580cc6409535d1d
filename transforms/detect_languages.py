"""DetectLanguages: a language for every key whose rows named none."""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from bulkinfer.format.records import METRICS_NAMESPACE
from bulkinfer.tasks.languages import LanguageDetector


class _Detect(beam.DoFn):
    def __init__(self, detector: LanguageDetector):
        self._detector = detector
        self._detected = Metrics.counter(METRICS_NAMESPACE, "languages_detected")
        self._unknown = Metrics.counter(METRICS_NAMESPACE, "languages_unknown")

    def process(self, table: pa.Table) -> Iterator[pa.Table]:
        languages = table.column("language").to_pylist()
        queries = table.column("query").to_pylist()
        detected = unknown = 0
        for i, language in enumerate(languages):
            if language is not None:
                continue
            # The representative spelling, not the key: the key folds Persian letters into Arabic ones.
            languages[i] = self._detector.detect(queries[i])
            detected, unknown = (detected + 1, unknown) if languages[i] is not None else (detected, unknown + 1)
        self._detected.inc(detected)
        self._unknown.inc(unknown)
        yield table.set_column(table.schema.get_field_index("language"), "language", pa.array(languages, pa.string()))


class DetectLanguages(beam.PTransform):
    """Fills in the ``language`` of key-group tables from the key where the language column gave none.

    Detection runs once per key, on its representative spelling (chosen the same way on
    every run and worker), so a key gets the same language everywhere. Keys the detector is unsure
    of keep ``None`` and get the task's fallback examples. A column value always wins.
    """

    def __init__(self, detector: LanguageDetector):
        """Args:
        detector: the language detector; its model loads on the worker, on first use.
        """
        super().__init__()
        self._detector = detector

    def expand(self, groups: beam.PCollection) -> beam.PCollection:
        return groups | "Detect" >> beam.ParDo(_Detect(self._detector))
