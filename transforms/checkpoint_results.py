"""CheckpointResults: write generated results durably in chunks as they come out of the engine."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from bulkinfer.format.records import conform


class _WriteChunks(beam.DoFn):
    def __init__(self, directory: str, prefix: str, schema: pa.Schema, chunk_rows: int):
        self._directory = directory
        self._prefix = prefix
        self._schema = schema
        self._chunk_rows = chunk_rows
        self._buffer: list[pa.Table] = []
        self._rows = 0

    def start_bundle(self) -> None:
        self._buffer, self._rows = [], 0

    def process(self, table: pa.Table) -> Iterator[pa.Table]:
        self._buffer.append(table)
        self._rows += table.num_rows
        if self._rows >= self._chunk_rows:
            self._flush()
        yield table

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables([conform(t, self._schema) for t in self._buffer])
        name = f"{self._prefix}-{uuid.uuid4().hex}.parquet"
        tmp = FileSystems.join(self._directory, f".{name}.tmp")
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        with FileSystems.create(tmp) as f:
            f.write(sink.getvalue().to_pybytes())
        # The rename makes the chunk visible whole or not at all.
        FileSystems.rename([tmp], [FileSystems.join(self._directory, name)])
        self._buffer, self._rows = [], 0


class CheckpointResults(beam.PTransform):
    """Passes tables of rows through unchanged, writing them to Parquet chunks in ``directory`` on the way.

    A chunk is written once ``chunk_rows`` rows have come (whole tables: an engine
    batch is never split) and at the end of each bundle, to a temporary name and then
    renamed, so a killed job leaves only whole chunks. A rerun reads them back
    (``ReuseResults``) and does not generate those keys again.
    """

    def __init__(self, directory: str, prefix: str, schema: pa.Schema, chunk_rows: int = 256):
        """Args:
        directory: where chunks go (local, ``gs://``, ``s3://``).
        prefix: file name prefix (``predictions`` or ``dead_letter``).
        schema: the rows' Arrow schema.
        chunk_rows: rows per chunk, at least; a crash loses at most this many generations (or one engine batch) per worker.
        """
        super().__init__()
        self._fn = _WriteChunks(directory, prefix, schema, chunk_rows)

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return rows | "WriteChunks" >> beam.ParDo(self._fn)
