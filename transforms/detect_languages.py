"""DetectLanguages: a language for every key whose rows named none."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from bulkinfer.format.records import METRICS_NAMESPACE, QueryGroup
from bulkinfer.tasks.languages import LanguageDetector


class _Detect(beam.DoFn):
    def __init__(self, detector: LanguageDetector):
        self._detector = detector
        self._detected = Metrics.counter(METRICS_NAMESPACE, "languages_detected")
        self._unknown = Metrics.counter(METRICS_NAMESPACE, "languages_unknown")

    def process(self, group: QueryGroup) -> Iterator[QueryGroup]:
        if group.language is not None:
            yield group
            return
        # The representative spelling, not the key: the key folds Persian letters into Arabic ones.
        language = self._detector.detect(group.query)
        (self._detected if language is not None else self._unknown).inc()
        yield dataclasses.replace(group, language=language) if language is not None else group


class DetectLanguages(beam.PTransform):
    """Fills in :attr:`QueryGroup.language` from the key where the language column gave none.

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
