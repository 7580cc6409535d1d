"""Look predictions up by query: the Python API of cache consumers.

    >>> from bulkinfer import open_table
    >>> table = open_table("tables/synonyms")
    >>> table.get("  Covid   VACCINE ")["synonyms"]
    ['coronavirus vaccine', ...]

Queries are normalised with the same ``normalize_key`` as the job. Lookups read the
version's embedded store (:mod:`bulkinfer.lookup.store`), not its Parquet shards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import orjson

from bulkinfer.errors import TableError
from bulkinfer.format import layout
from bulkinfer.keys import KEY_VERSION, normalize_key
from bulkinfer.lookup.match import ITEM_LANGUAGES, MatchIndex, open_match_index
from bulkinfer.lookup.store import Store, open_store

_LOG = logging.getLogger(__name__)


class PredictionTable:
    """One version of a prediction table, read from its store file.

    Opening reads the store's metadata only; a lookup is one indexed read and one
    JSON decode. Safe to share between threads. Rows are dicts of every column of
    ``predictions-*.parquet`` (``key``, the output column, ``raw_output``,
    ``source_rows``, ``run_id``, ``model``, ...).
    """

    def __init__(
        self, location: str, version: str, manifest: dict[str, Any], store: Store, cache_dir: str | os.PathLike[str] | None = None
    ):
        """Use :func:`open_table`; this takes an opened store of the version (and where to build a missing match index)."""
        self.location = location
        """The table directory."""
        self.version = version
        """The version these rows belong to."""
        self.manifest = manifest
        """The version's manifest (counts, task, model, run id, times)."""
        self.output_column = str(manifest.get("output_column", ""))
        """The typed output column (``synonyms``, ``label``, ...)."""
        self.store = store
        """The store file the rows are read from."""
        self._columns = store.columns
        self._constants = store.constants
        self._missing: Any = [] if manifest.get("output_kind") == "list" else None
        self._cache_dir = cache_dir
        self._match_index: MatchIndex | None = None

    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, query: object) -> bool:
        return isinstance(query, str) and self.store.get(normalize_key(query)) is not None

    def __enter__(self) -> PredictionTable:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def get(self, query: str) -> dict[str, Any] | None:
        """The prediction row for a query, or None when the table has no row for its key."""
        return self._get_key(normalize_key(query))

    def get_many(self, queries: Iterable[str]) -> list[dict[str, Any] | None]:
        """``get`` for each query, in order, with one store read for the whole batch."""
        keys = [normalize_key(q) for q in queries]
        found = self.store.get_many(set(keys))
        return [self._row(key, found[key]) if key in found else None for key in keys]

    def answer(self, query: str) -> dict[str, Any]:
        """What consumers print and serve for a query: found or not, the output, and where it comes from.

        ``{"query", "key", "found", <output column>, "version"}``, plus ``model`` and
        ``run_id`` when found, and ``item_languages`` (the language of each item) for
        tasks with ``target_languages``, whose output is the union of the key's items
        over its target languages; a miss has an empty list (list tasks) or null as output.
        """
        key = normalize_key(query)
        return self._answer(query, key, self._get_key(key))

    def answer_many(self, queries: list[str]) -> list[dict[str, Any]]:
        """``answer`` for each query, in order, with one store read for the whole batch."""
        keys = [normalize_key(q) for q in queries]
        found = self.store.get_many(set(keys))
        return [self._answer(q, key, self._row(key, found[key]) if key in found else None) for q, key in zip(queries, keys, strict=True)]

    def match(self, query: str, exact: bool = False) -> dict[str, Any]:
        """Which concepts a live query is about: ``{"query", "key", "matches", "version"}``.

        ``matches`` holds ``{"concept", "item", "language", "start", "end"}`` objects in
        query order (``start``/``end``: code-point offsets into ``key``). By default
        every item inside the normalised query on token boundaries, longest first,
        non-overlapping; with ``exact``, only the whole query as an item or a concept
        key. An item claimed by several concepts gives one match per concept, ranked
        (see :mod:`bulkinfer.lookup.match`).

        Raises:
            TableError: the table answers labels, not lists of items.
        """
        key = normalize_key(query)
        return {"query": query, "key": key, "matches": self.match_index().match(key, exact=exact), "version": self.version}

    def match_many(self, queries: Iterable[str], exact: bool = False) -> list[dict[str, Any]]:
        """``match`` for each query, in order."""
        return [self.match(query, exact=exact) for query in queries]

    def match_index(self) -> MatchIndex:
        """The version's match index, opened on first use (built once into the cache for versions without one).

        Raises:
            TableError: the table answers labels, not lists of items.
        """
        if self._match_index is None:
            self._match_index = open_match_index(self.location, self.version, self.manifest, self._cache_dir)
        return self._match_index

    def close(self) -> None:
        """Closes the store and the match index; later lookups fail."""
        self.store.close()
        if self._match_index is not None:
            self._match_index.close()

    def _get_key(self, key: str) -> dict[str, Any] | None:
        value = self.store.get(key)
        return None if value is None else self._row(key, value)

    def _row(self, key: str, value: bytes) -> dict[str, Any]:
        row = {"key": key}
        row.update(zip(self._columns, orjson.loads(value), strict=True))
        row.update(self._constants)
        return row

    def _answer(self, query: str, key: str, row: dict[str, Any] | None) -> dict[str, Any]:
        out = {"query": query, "key": key, "found": row is not None}
        if row is None:
            out[self.output_column] = self._missing
            out["version"] = self.version
        else:
            out[self.output_column] = row[self.output_column]
            out.update(version=self.version, model=row["model"], run_id=row["run_id"])
            if ITEM_LANGUAGES in row:  # fanned out into target_languages: the union, each item with its language
                out[ITEM_LANGUAGES] = row[ITEM_LANGUAGES]
        return out


def open_table(location: str, version: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> PredictionTable:
    """Opens the published version of a table (or a named one).

    Args:
        location: the table directory given to the job as ``--output``.
        version: a version name; default: the one ``CURRENT`` names.
        cache_dir: where stores of versions without one (or of remote tables) are
            built or downloaded, once; default ``~/.cache/bulkinfer/stores``.

    Raises:
        TableError: no table there, nothing published, or the version is incomplete.
    """
    if version is None and layout.read_current(location) is None:
        raise TableError(f"{location} has no published version (no {layout.CURRENT} file); run `bulkinfer run --output {location}` first")
    version, manifest = layout.resolve_version(location, version)
    made_with = manifest.get("key_normalizer", 1)  # versions from before it was recorded used version 1
    if made_with != KEY_VERSION:
        # Not an error: ASCII keys are the same under every version; other spellings may miss.
        _LOG.warning(
            "%s version %s was keyed with key normaliser version %s, this reader uses %s: "
            "lookups of some non-ASCII spellings may miss; rerun the job with this bulkinfer, or read with the matching one",
            location,
            version,
            made_with,
            KEY_VERSION,
        )
    return PredictionTable(location, version, manifest, open_store(location, version, manifest, cache_dir), cache_dir)
