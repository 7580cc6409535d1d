"""ReuseResults: carry forward the previous version's results for keys whose fingerprint is unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue

from bulkinfer.errors import Reason

REUSED = "reused"
REUSED_DEAD = "reused_dead"

# Dead letters that the same fingerprint would produce again: a prompt too long for
# the context stays too long; a greedy answer that did not parse parses no better.
# Engine failures may be transient and are retried.
_DETERMINISTIC = {Reason.PROMPT_TOO_LONG, Reason.UNPARSEABLE_OUTPUT}


class _Split(beam.DoFn):
    def __init__(self, fingerprint: str, greedy: bool):
        self._fingerprint = fingerprint
        self._reusable_dead = _DETERMINISTIC if greedy else {Reason.PROMPT_TOO_LONG}

    def process(self, item: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        _, joined = item
        # No group: the key left the corpus, so it leaves the table too.
        for group in joined["groups"][:1]:
            row = next((r for r in joined["previous"] if r.get("fingerprint") == self._fingerprint), None)
            dead = next(
                (
                    d
                    for d in joined["previous_dead"]
                    if d.get("fingerprint") == self._fingerprint and d.get("reason") in self._reusable_dead
                ),
                None,
            )
            if row is not None:
                # The answer and its provenance stay as they were; only the corpus count is today's.
                yield pvalue.TaggedOutput(REUSED, {**row, "source_rows": group.source_rows})
            elif dead is not None:
                yield pvalue.TaggedOutput(REUSED_DEAD, {**dead, "source_rows": group.source_rows})
            else:
                yield group


class ReuseResults(beam.PTransform):
    """Splits keys into those that need generating and results reused from the previous version.

    A key is reused when the previous version has a prediction for it with the same
    fingerprint (task spec, model, sampling, engine version): the answer would be the
    same, so the engine is not asked again. A key whose previous result was a
    deterministic dead letter (``prompt_too_long``; ``unparseable_output`` under greedy
    decoding) with the same fingerprint keeps that dead letter. Returns
    ``(to_generate, reused_predictions, reused_dead_letters)``.
    """

    def __init__(self, fingerprint: str, greedy: bool):
        """Args:
        fingerprint: this run's fingerprint (``Provenance.fingerprint``).
        greedy: whether the task samples at temperature 0 (same prompt, same answer).
        """
        super().__init__()
        self._fingerprint = fingerprint
        self._greedy = greedy

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection, beam.PCollection]) -> tuple[beam.PCollection, ...]:
        groups, previous, previous_dead = inputs
        split = (
            {
                "groups": groups | "KeyGroups" >> beam.Map(lambda g: (g.key, g)),
                "previous": previous | "KeyPrevious" >> beam.Map(lambda row: (row["key"], row)),
                "previous_dead": previous_dead
                | "KeyedDeadOnly" >> beam.Filter(lambda row: row.get("key") is not None)
                | "KeyPreviousDead" >> beam.Map(lambda row: (row["key"], row)),
            }
            | "JoinOnKey" >> beam.CoGroupByKey()
            | "Split" >> beam.ParDo(_Split(self._fingerprint, self._greedy)).with_outputs(REUSED, REUSED_DEAD, main="to_generate")
        )
        return split.to_generate, split[REUSED], split[REUSED_DEAD]
