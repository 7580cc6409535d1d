"""ReuseResults: carry forward earlier results for keys whose fingerprint is unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from bulkinfer.errors import Reason
from bulkinfer.format import fs
from bulkinfer.format.layout import DEAD_LETTER, PREDICTIONS
from bulkinfer.format.records import METRICS_NAMESPACE

REUSED = "reused"
REUSED_DEAD = "reused_dead"

# Dead letters that the same fingerprint would produce again: a prompt too long for
# the context stays too long; a greedy answer that did not parse parses no better.
# Engine failures may be transient and are retried.
_DETERMINISTIC = {Reason.PROMPT_TOO_LONG, Reason.UNPARSEABLE_OUTPUT}


class SplitByReuse(beam.DoFn):
    """Sends a key to generation, or carries an earlier result (same fingerprint) or dead letter for it.

    Public so that ``bulkinfer run --dry_run`` applies the job's own reuse rules.
    """

    def __init__(self, fingerprint: str, greedy: bool):
        self._fingerprint = fingerprint
        self._reusable_dead = _DETERMINISTIC if greedy else {Reason.PROMPT_TOO_LONG}
        self._resumed = Metrics.counter(METRICS_NAMESPACE, "resumed_from_checkpoints")

    def process(self, item: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        _, joined = item
        # No group: the key left the corpus, so it leaves the table too. Several groups: the
        # key fanned out into target languages (FanOutLanguages), each reused on its own.
        for group in {g.language: g for g in reversed(joined["groups"])}.values():
            # The key's language picks its examples: a result made for another language answered another prompt.
            language = group.language
            found = self._first(joined, "previous", "checkpoint", lambda r: r.get("language") == language)  # noqa: B023
            dead = self._first(
                joined,
                "previous_dead",
                "checkpoint_dead",
                lambda d: d.get("language") == language and d.get("reason") in self._reusable_dead,  # noqa: B023
            )
            if found is not None:
                # The answer and its provenance stay as they were; only the corpus count is today's.
                yield pvalue.TaggedOutput(REUSED, {**found, "source_rows": group.source_rows})
            elif dead is not None:
                yield pvalue.TaggedOutput(REUSED_DEAD, {**dead, "source_rows": group.source_rows})
            else:
                yield group

    def _first(self, joined: dict[str, list[Any]], published: str, checkpointed: str, usable: Any) -> dict[str, Any] | None:
        for source in (published, checkpointed):
            for row in joined[source]:
                if row.get("fingerprint") == self._fingerprint and usable(row):
                    if source == checkpointed:
                        self._resumed.inc()
                    return row
        return None


def _read_results(pipeline: beam.Pipeline, name: str, directory: str | None, kind: str) -> beam.PCollection:
    pattern = fs.join(directory, f"{kind}-*.parquet") if directory else None
    if pattern is None or not fs.match(pattern):
        return pipeline | f"No_{name}" >> beam.Create([])
    return pipeline | f"Read_{name}" >> beam.io.ReadFromParquet(pattern)


SOURCES = ("previous", "previous_dead", "checkpoint", "checkpoint_dead")
"""The result sources ``ReuseResults`` joins, by name."""


class ReuseResults(beam.PTransform):
    """Splits keys into those that need generating and results reused from earlier work.

    Earlier work is the published version (``previous``, ``previous_dead``) and the
    chunks that runs checkpointed while generating (``checkpoint``,
    ``checkpoint_dead``), including those of a run that was killed. A key is reused
    when one of them holds a prediction with the same fingerprint (task spec, model,
    sampling, engine version) and the same language (which picks the examples): the
    answer would be the same, so the engine is not asked again. A key whose earlier
    result was a deterministic dead letter (``prompt_too_long``; ``unparseable_output``
    under greedy decoding) with the same fingerprint and language keeps that dead letter.
    A key fanned out into target languages is reused per language: a rerun that adds a
    target generates only the new (key, language) pairs. Applied to the keys' groups;
    returns ``(to_generate, reused_predictions, reused_dead_letters)``.
    """

    def __init__(self, fingerprint: str, greedy: bool, published: str | None, checkpoints: str):
        """Args:
        fingerprint: this run's fingerprint (``Provenance.fingerprint``).
        greedy: whether the task samples at temperature 0 (same prompt, same answer).
        published: the published version's directory to reuse from, or None (first run, ``--full``).
        checkpoints: the checkpoint directory (or glob of directories) to resume from.
        """
        super().__init__()
        self._fingerprint = fingerprint
        self._greedy = greedy
        self._directories = {"previous": published, "checkpoint": checkpoints}

    def expand(self, groups: beam.PCollection) -> tuple[beam.PCollection, ...]:
        keyed = {"groups": groups | "KeyGroups" >> beam.Map(lambda g: (g.key, g))}
        for name in SOURCES:
            source, _, dead = name.partition("_")
            keyed[name] = (
                _read_results(groups.pipeline, name, self._directories[source], DEAD_LETTER if dead else PREDICTIONS)
                | f"Keyed_{name}" >> beam.Filter(lambda row: row.get("key") is not None)
                | f"Key_{name}" >> beam.Map(lambda row: (row["key"], row))
            )
        split = (
            keyed
            | "JoinOnKey" >> beam.CoGroupByKey()
            | "Split" >> beam.ParDo(SplitByReuse(self._fingerprint, self._greedy)).with_outputs(REUSED, REUSED_DEAD, main="to_generate")
        )
        return split.to_generate, split[REUSED], split[REUSED_DEAD]
