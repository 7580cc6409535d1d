"""Tables that cross a shuffle as files: a ``GroupByKey`` carries a file's name, not its rows.

Beam's in-process runner holds every ``GroupByKey``'s input whole in memory, encoded,
until the stage that feeds it has finished: a shuffle of the corpus's keys needs memory
for the corpus. The stages around this job's shuffles (key buckets, the reuse join, the
reused rows by file) therefore write the tables they send to Arrow IPC files in the
version's spill directory and send the names; the stage after the shuffle reads the
files of its key, a bucket at a time. Memory is then bounded by a bucket and by the rows
a writer buffers (:data:`FLUSH_ROWS`), not by the corpus, on every runner. The files
live until the run ends (``layout.spill_dir`` is deleted with the pipeline's end), so a
retried bundle reads the same files again.

With no spill directory (tests of a single transform), the tables cross the shuffle
themselves, as before.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Hashable, Iterable, Iterator

import pyarrow as pa
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from bulkinfer.format import fs

FLUSH_ROWS = 1 << 20
"""Rows a :class:`SpillWriter` buffers before it writes them out, one file per key: bounds its memory, and keeps
files few (a file per key per flush, not per incoming table: an object store pays per file)."""


class SpillWriter:
    """Buffers ``(key, table)`` pairs and hands them on as ``(key, file name)`` once :data:`FLUSH_ROWS` rows wait.

    One per DoFn instance: :meth:`add` from ``process``, :meth:`finish` from
    ``finish_bundle`` (everything buffered goes out at the end of a bundle, as
    windowed values). With ``directory`` None, :meth:`add` hands each pair on as it came.
    """

    def __init__(self, directory: str | None, flush_rows: int | None = None):
        """Args:
        directory: where the files go (local, ``gs://``, ``s3://``), or None to hand tables on whole.
        flush_rows: rows buffered, over all keys, before they are written (default :data:`FLUSH_ROWS`).
        """
        self._directory = directory
        self._flush_rows = FLUSH_ROWS if flush_rows is None else flush_rows
        self._buffered: dict[Hashable, list[pa.Table]] = {}
        self._rows = 0
        self._made = False

    def add(self, key: Hashable, table: pa.Table) -> Iterator[tuple[Hashable, str | pa.Table]]:
        """Takes one table for ``key``; yields what a flush wrote, if this table filled the buffer."""
        if self._directory is None:
            yield key, table
            return
        self._buffered.setdefault(key, []).append(table)
        self._rows += table.num_rows
        if self._rows >= self._flush_rows:
            yield from self._flush()

    def finish(self) -> Iterator[WindowedValue]:
        """Writes what is buffered; yields its ``(key, file name)`` pairs as values of the global window."""
        for pair in self._flush():
            yield WindowedValue(pair, window.GlobalWindow().max_timestamp(), [window.GlobalWindow()])

    def _flush(self) -> Iterator[tuple[Hashable, str]]:
        buffered, self._buffered, self._rows = self._buffered, {}, 0
        for key, tables in buffered.items():
            yield key, self._write(pa.concat_tables(tables, promote_options="permissive"))

    def _write(self, table: pa.Table) -> str:
        assert self._directory is not None
        path = fs.join(self._directory, f"{uuid.uuid4().hex}.arrow")
        if fs.is_remote(path):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            with fs.create(path) as stream:
                stream.write(sink.getvalue().to_pybytes())
            return path
        if not self._made:
            os.makedirs(self._directory, exist_ok=True)
            self._made = True
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return path


def read_spilled(items: Iterable[str | pa.Table]) -> list[pa.Table]:
    """The tables behind a shuffle's values: each file (a name from :class:`SpillWriter`) read, a table as it is.

    Local files are memory-mapped: their pages are read as the consumer touches them.
    """
    return [item if isinstance(item, pa.Table) else _read(item) for item in items]


def _read(path: str) -> pa.Table:
    if fs.is_remote(path):
        with fs.open_read(path) as stream:
            return pa.ipc.open_file(pa.py_buffer(stream.read())).read_all()
    return pa.ipc.open_file(pa.memory_map(path)).read_all()
