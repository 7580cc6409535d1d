"""WriteVersion: a version's prediction and dead-letter Parquet files."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from bulkinfer.format import fs
from bulkinfer.format.layout import DEAD_LETTER, PREDICTIONS
from bulkinfer.format.records import DEAD_LETTER_SCHEMA, conform

STAGING = ".staging"
"""Where a version's shards are written before the write commits (a directory in the version directory)."""

ROW_GROUP_ROWS = 65_536
"""Rows buffered into one Parquet row group: a writer holds at most this many (plus one incoming table)."""


PCollections = beam.PCollection | tuple[beam.PCollection, ...]
"""One PCollection of tables, or several written alike."""


class _WriteShard(beam.DoFn):
    """Writes the tables of one bundle to one Parquet file in the staging directory; yields the file's name.

    A bundle that fails leaves its file behind unnamed in the output: only files whose
    names reach :class:`_CommitShards` (the bundle committed) become part of the version.
    """

    def __init__(self, staging: str, kind: str, schema: pa.Schema):
        self._staging = staging
        self._kind = kind
        self._schema = schema
        self._writer: pq.ParquetWriter | None = None
        self._stream: Any = None
        self._name = ""
        self._pending: list[pa.Table] = []
        self._rows = 0

    def start_bundle(self) -> None:
        self._abandon()
        self._pending, self._rows = [], 0

    def teardown(self) -> None:
        self._abandon()

    def _abandon(self) -> None:
        # A shard left open by a bundle that failed: its name never reaches the commit, so errors closing it do not matter.
        with contextlib.suppress(Exception):
            self._close()
        self._writer, self._stream = None, None

    def _close(self) -> None:
        writer, stream, self._writer, self._stream = self._writer, self._stream, None, None
        if writer is not None:
            writer.close()
        if stream is not None:
            stream.close()

    def process(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(conform(table, self._schema))
        self._rows += table.num_rows
        if self._rows >= ROW_GROUP_ROWS:
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            self._name = f"{self._kind}-{uuid.uuid4().hex}.parquet"
            self._stream = fs.create(fs.join(self._staging, self._name))
            self._writer = pq.ParquetWriter(self._stream, self._schema)
        self._writer.write_table(pa.concat_tables(self._pending), row_group_size=max(self._rows, 1))
        self._pending, self._rows = [], 0

    def finish_bundle(self) -> Iterator[WindowedValue]:
        self._write_pending()
        if self._writer is None:
            return
        self._close()
        yield WindowedValue(self._name, window.GlobalWindow().max_timestamp(), [window.GlobalWindow()])


class _CommitShards(beam.DoFn):
    """Moves the committed shards into the version directory as ``<kind>-NNNNN-of-MMMMM.parquet`` and drops the staging directory.

    A kind with no rows gets one empty file with its schema, so every version holds
    both kinds. Safe to run again after a failure part way: a shard already moved is
    not moved twice (the names are the same in every attempt: the sorted committed names).
    """

    def __init__(self, vdir: str, staging: str, schemas: dict[str, pa.Schema]):
        self._vdir = vdir
        self._staging = staging
        self._schemas = schemas

    def process(self, _: Any, committed: Iterable[str]) -> Iterator[str]:
        names = sorted(committed)
        for kind, schema in self._schemas.items():
            mine = [name for name in names if name.startswith(f"{kind}-")]
            if not mine:
                empty = fs.join(self._vdir, f"{kind}-00000-of-00001.parquet")
                if not fs.exists(empty):
                    with fs.create(empty) as stream:
                        pq.write_table(schema.empty_table(), stream)
                yield empty
                continue
            for number, name in enumerate(mine):
                source = fs.join(self._staging, name)
                destination = fs.join(self._vdir, f"{kind}-{number:05d}-of-{len(mine):05d}.parquet")
                if fs.exists(source):
                    fs.rename(source, destination)
                yield destination
        if fs.exists(self._staging):  # what is left there came from failed attempts
            fs.delete([self._staging])


class WriteVersion(beam.PTransform):
    """Writes tables of prediction and dead-letter rows as ``predictions-*.parquet`` and ``dead_letter-*.parquet`` into a version directory.

    Applied to ``(predictions, dead)``, each one PCollection of tables or a tuple of them.

    Each bundle writes its rows to one file in a staging directory (a row group per
    :data:`ROW_GROUP_ROWS` rows, so memory holds a row group, not the bundle); once
    every bundle has committed, one step moves the committed files into place, the
    way Beam's file sinks finalise a write but in three steps rather than ten per sink.
    The version becomes visible to readers only when the job then writes the manifest
    and swaps ``CURRENT`` (``bulkinfer.format.layout.publish``), after the whole
    pipeline has succeeded. Returns the written paths.
    """

    def __init__(self, vdir: str, prediction_schema: pa.Schema):
        """Args:
        vdir: the version directory (local, ``gs://`` or ``s3://``).
        prediction_schema: the task's prediction schema (``records.prediction_schema``).
        """
        super().__init__()
        self._vdir = vdir
        self._schema = prediction_schema

    def expand(self, tables: tuple[PCollections, PCollections]) -> beam.PCollection:
        predictions, dead = (_as_tuple(side) for side in tables)
        staging = fs.join(self._vdir, STAGING)
        schemas = {PREDICTIONS: self._schema, DEAD_LETTER: DEAD_LETTER_SCHEMA}
        # Each input written where it is made, no Flatten first: Beam's in-process runner holds a Flatten's
        # whole input in memory before the step after it runs, and this would be every row of the version.
        written = [
            collection | f"Write{kind.title().replace('_', '')}{number or ''}" >> beam.ParDo(_WriteShard(staging, kind, schemas[kind]))
            for kind, collections in ((PREDICTIONS, predictions), (DEAD_LETTER, dead))
            for number, collection in enumerate(collections)
        ]
        names = written | "Shards" >> beam.Flatten(pipeline=predictions[0].pipeline)
        # Once, after every shard, even when there were none (then both kinds get an empty file).
        return (
            predictions[0].pipeline
            | "Once" >> beam.Create([None])
            | "Commit" >> beam.ParDo(_CommitShards(self._vdir, staging, schemas), committed=beam.pvalue.AsList(names))
        )


def _as_tuple(side: PCollections) -> tuple[beam.PCollection, ...]:
    return side if isinstance(side, tuple) else (side,)
