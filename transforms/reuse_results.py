"""ReuseResults: carry forward the previous version's answers for keys whose fingerprint is unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue

from bulkinfer.records import QueryGroup

REUSED = "reused"


class _Split(beam.DoFn):
    def __init__(self, fingerprint: str):
        self._fingerprint = fingerprint

    def process(self, item: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        _, joined = item
        groups, previous = joined["groups"], joined["previous"]
        if not groups:
            return  # the key left the corpus: it leaves the table too
        group: QueryGroup = groups[0]
        match = next((row for row in previous if row.get("fingerprint") == self._fingerprint), None)
        if match is None:
            yield group
        else:
            # The answer and its provenance stay as they were; only the corpus count is today's.
            yield pvalue.TaggedOutput(REUSED, {**match, "source_rows": group.source_rows})


class ReuseResults(beam.PTransform):
    """Splits keys into those that need generating and rows reused from the previous version.

    A key is reused when the previous version has a row for it with the same
    fingerprint (task spec, model, sampling, engine version): the answer would be
    the same, so the GPU is not asked again. Returns ``(to_generate, reused)``.
    """

    def __init__(self, fingerprint: str):
        """Args:
        fingerprint: this run's fingerprint (``Provenance.fingerprint``).
        """
        super().__init__()
        self._fingerprint = fingerprint

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> tuple[beam.PCollection, beam.PCollection]:
        groups, previous = inputs
        keyed_groups = groups | "KeyGroups" >> beam.Map(lambda g: (g.key, g))
        keyed_previous = previous | "KeyPrevious" >> beam.Map(lambda row: (row["key"], row))
        split = (
            {"groups": keyed_groups, "previous": keyed_previous}
            | "JoinOnKey" >> beam.CoGroupByKey()
            | "Split" >> beam.ParDo(_Split(self._fingerprint)).with_outputs(REUSED, main="to_generate")
        )
        return split.to_generate, split[REUSED]
