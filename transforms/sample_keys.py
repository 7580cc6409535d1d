"""SampleKeys: a fixed, reproducible sample of the keys, for cheap shadow runs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from bulkinfer.format.records import METRICS_NAMESPACE, QueryGroup


def key_rank(key: str) -> bytes:
    """Where a key falls in every sample: by a hash, so samples of the same corpus
    taken by different runs (a base model, a distilled one) hold the same keys."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()


def _rank(group: QueryGroup) -> bytes:
    return key_rank(group.key)


class _KeepSampled(beam.DoFn):
    def __init__(self) -> None:
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "rows_not_sampled")

    def process(self, group: QueryGroup, sampled: frozenset[str]) -> Iterator[QueryGroup]:
        if group.key in sampled:
            yield group
        else:
            # Counted, so the job's row accounting still covers every input row.
            self._skipped.inc(group.source_rows)


class SampleKeys(beam.PTransform):
    """Keeps the ``size`` keys with the smallest hash; the rest are counted, not processed.

    The sample depends on the keys alone, so two runs over one corpus (say, the
    published model and a candidate, each with ``--sample 1000``) sample the same
    keys and ``bulkinfer compare`` sees them all in both tables.
    """

    def __init__(self, size: int):
        """Args:
        size: keys to keep.
        """
        super().__init__()
        self._size = size

    def expand(self, groups: beam.PCollection) -> beam.PCollection:
        chosen = (
            groups
            | "SmallestHashes" >> beam.combiners.Top.Smallest(self._size, key=_rank)
            | "KeySet" >> beam.Map(lambda top: frozenset(g.key for g in top))
        )
        return groups | "KeepSampled" >> beam.ParDo(_KeepSampled(), sampled=beam.pvalue.AsSingleton(chosen))
