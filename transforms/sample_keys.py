"""SampleKeys: a fixed, reproducible sample of the keys, for cheap shadow runs."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from bulkinfer.format.records import METRICS_NAMESPACE


def key_rank(key: str) -> bytes:
    """Where a key falls in every sample: by a hash, so samples of the same corpus
    taken by different runs (a base model, a distilled one) hold the same keys."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()


class _SmallestRanks(beam.CombineFn):
    """The ``size`` (rank, key) pairs with the smallest rank, over key-group tables."""

    def __init__(self, size: int):
        self._size = size

    def create_accumulator(self) -> list[tuple[bytes, str]]:
        return []

    def add_input(self, acc: list[tuple[bytes, str]], table: pa.Table) -> list[tuple[bytes, str]]:
        ranked = ((key_rank(key), key) for key in table.column("key").to_pylist())
        return heapq.nsmallest(self._size, [*acc, *ranked])

    def merge_accumulators(self, accs: Iterable[list[tuple[bytes, str]]]) -> list[tuple[bytes, str]]:
        return heapq.nsmallest(self._size, [pair for acc in accs for pair in acc])

    def extract_output(self, acc: list[tuple[bytes, str]]) -> pa.Array:
        return pa.array([key for _, key in acc], pa.string())


class _KeepSampled(beam.DoFn):
    def __init__(self) -> None:
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "rows_not_sampled")

    def process(self, table: pa.Table, sampled: pa.Array) -> Iterator[pa.Table]:
        kept = pc.is_in(table.column("key"), value_set=sampled)
        # Counted, so the job's row accounting still covers every input row.
        self._skipped.inc(int(pc.sum(table.filter(pc.invert(kept)).column("source_rows")).as_py() or 0))
        if pc.any(kept).as_py():
            yield table.filter(kept)


class SampleKeys(beam.PTransform):
    """Keeps the ``size`` keys with the smallest hash; the rest are counted, not processed.

    The sample depends on the keys alone, so two runs over one corpus (say, the
    published model and a candidate, each with ``--sample 1000``) sample the same
    keys and ``bulkinfer compare`` sees them all in both tables. Applied to key-group
    tables (``NormalizeKeys``); returns them holding only the sampled keys.
    """

    def __init__(self, size: int):
        """Args:
        size: keys to keep.
        """
        super().__init__()
        self._size = size

    def expand(self, groups: beam.PCollection) -> beam.PCollection:
        chosen = groups | "SmallestHashes" >> beam.CombineGlobally(_SmallestRanks(self._size))
        return groups | "KeepSampled" >> beam.ParDo(_KeepSampled(), sampled=beam.pvalue.AsSingleton(chosen))
