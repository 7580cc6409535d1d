"""Look predictions up by query: the Python API of cache consumers.

    >>> from bulkinfer import open_table
    >>> table = open_table("tables/synonyms")
    >>> table.get("  Covid   VACCINE ")["synonyms"]
    ['coronavirus vaccine', ...]

Queries are normalised with the same ``normalize_key`` as the job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from bulkinfer import layout
from bulkinfer.errors import TableError
from bulkinfer.keys import normalize_key


class PredictionTable:
    """One version of a prediction table, held as Arrow columns with a key index.

    Opening reads the version's prediction shards and builds a ``dict`` from key
    to row; a lookup converts only the row it returns into Python objects.
    """

    def __init__(self, location: str, version: str, manifest: dict[str, Any], rows: pa.Table):
        """Use :func:`open_table`; this takes an already read version."""
        self.location = location
        """The table directory."""
        self.version = version
        """The version these rows belong to."""
        self.manifest = manifest
        """The version's manifest (counts, task, model, run id, times)."""
        self.output_column = str(manifest.get("output_column", ""))
        """The typed output column (``synonyms``, ``label``, ...)."""
        self._rows = rows.combine_chunks()
        self._columns = {name: self._rows.column(name) for name in self._rows.column_names}
        keys = self._rows.column("key").to_pylist()
        self._index = dict(zip(keys, range(len(keys)), strict=True))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, query: object) -> bool:
        return isinstance(query, str) and normalize_key(query) in self._index

    def get(self, query: str) -> dict[str, Any] | None:
        """The prediction row for a query, or None when the table has no row for its key."""
        row = self._index.get(normalize_key(query))
        if row is None:
            return None
        return {name: column[row].as_py() for name, column in self._columns.items()}

    def get_many(self, queries: Iterable[str]) -> list[dict[str, Any] | None]:
        """``get`` for each query, in order."""
        return [self.get(q) for q in queries]


def open_table(location: str, version: str | None = None) -> PredictionTable:
    """Opens the published version of a table (or a named one).

    Args:
        location: the table directory given to the job as ``--output``.
        version: a version name; default: the one ``CURRENT`` names.

    Raises:
        TableError: no table there, nothing published, or the version is incomplete.
    """
    version = version or layout.read_current(location)
    if version is None:
        raise TableError(f"{location} has no published version (no {layout.CURRENT} file); run `bulkinfer run --output {location}` first")
    vdir = layout.version_dir(location, version)
    manifest = layout.read_manifest(vdir)
    rows = layout.read_shards(vdir, layout.PREDICTIONS)
    if rows is None:
        raise TableError(f"{vdir} has no predictions-*.parquet files")
    return PredictionTable(location, version, manifest, rows)
