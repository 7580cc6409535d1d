"""Keying and merging whole Arrow tables of corpus rows: the columnar inside of ``NormalizeKeys``.

The rules are those of :class:`bulkinfer.transforms.normalize_keys.KeyRow` and
``PickRepresentative``; this module applies them a table at a time. Python runs once
per distinct spelling (the key normaliser) and per dead-lettered row; everything
else (votes, ranks, the merge) is pyarrow compute.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from bulkinfer.format.records import DEAD_LETTER_SCHEMA, METRICS_NAMESPACE, Provenance, field_column
from bulkinfer.keys import normalize_keys
from bulkinfer.tasks.languages import normalize_language
from bulkinfer.transforms.spill import SpillWriter, read_spilled

KEY_BUCKETS = 64
"""Buckets the keys are spread over by a stable hash, so the merge of spellings is one element per bucket, not per key."""

_RANK = ["key", "not_key", "untidy", "query", "fields_rank"]
"""A spelling's rank (smallest first): the key itself, then tidy whitespace, then the smallest spelling and template values."""


_HASH_CHUNK = 1 << 16
"""Keys hashed per numpy pass: bounds the per-byte temporaries to a few MB."""

_PRIME = np.uint64(0x100000001B3)


def key_buckets(keys: pa.Array | pa.ChunkedArray, buckets: int = KEY_BUCKETS) -> np.ndarray:
    """The bucket of every key (null: bucket 0), by a stable hash of its UTF-8 bytes, in numpy.

    A polynomial hash over the bytes (multiplier the FNV prime, wrapping at 2**64),
    then a final mix: the same key lands in the same bucket in every process and run,
    and only numpy passes over the bytes run, not Python per key. Buckets are the
    job's own partitioning, never stored, so the hash may change between releases.
    """
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    keys = keys.cast(pa.large_string())
    out = np.empty(len(keys), np.int64)
    for start in range(0, len(keys), _HASH_CHUNK):
        out[start : start + _HASH_CHUNK] = _hash_chunk(keys.slice(start, _HASH_CHUNK)) % np.uint64(buckets)
    return out


def _hash_chunk(keys: pa.LargeStringArray) -> np.ndarray:
    offsets = np.frombuffer(keys.buffers()[1], np.int64, len(keys) + 1, keys.offset * 8)
    data = keys.buffers()[2]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    nonempty = lengths > 0
    hashes = np.zeros(len(keys), np.uint64)
    if nonempty.any():
        data = data[offsets[0] : offsets[-1]].astype(np.uint64)
        # Each byte's place in its key, and the multiplier's power for that place.
        place = np.arange(len(data), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], lengths)
        powers = _powers(1 << int(lengths.max() - 1).bit_length())
        with np.errstate(over="ignore"):
            terms = (data + np.uint64(1)) * powers[place]
            hashes[nonempty] = np.add.reduceat(terms, (offsets[:-1] - offsets[0])[nonempty])
            hashes += lengths.astype(np.uint64)
            # A final mix (splitmix64's), so that the low bits a modulus reads depend on every byte.
            hashes ^= hashes >> np.uint64(30)
            hashes *= np.uint64(0xBF58476D1CE4E5B9)
            hashes ^= hashes >> np.uint64(27)
            hashes *= np.uint64(0x94D049BB133111EB)
            hashes ^= hashes >> np.uint64(31)
    return hashes


@functools.lru_cache(maxsize=8)
def _powers(n: int) -> np.ndarray:
    """The multiplier's first ``n`` powers, wrapping at 2**64."""
    with np.errstate(over="ignore"):
        powers = np.ones(n, np.uint64)
        for i in range(1, n):
            powers[i] = powers[i - 1] * _PRIME
    return powers


def split_by(table: pa.Table, ids: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """``(id, rows)`` for every distinct id of the rows (numpy integers, one per row), rows in table order."""
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.diff(ids, prepend=-1))
    for start, end in zip(starts, [*starts[1:], len(ids)], strict=True):
        # take, not slice: a pickled slice carries its parent's whole buffers, so 64 slices would ship the table 64 times.
        yield int(ids[start]), table.take(pa.array(order[start:end]))


def key_bucket(key: str, buckets: int = KEY_BUCKETS) -> int:
    """The bucket of one key (:func:`key_buckets`)."""
    return int(key_buckets(pa.array([key], pa.string()), buckets)[0])


class KeyTable(beam.DoFn):
    """Keys a table of corpus rows; yields ``(bucket, spellings)`` pairs and a table of dead letters.

    ``spellings`` holds, for every (key, language) of the table in that bucket, its
    row count and best-ranked spelling (with its template columns); with ``spill``, a
    bundle's spellings are written to files there and ``spellings`` is a file's name
    (:mod:`bulkinfer.transforms.spill`). Rows without a usable query go to the ``dead``
    output, one table of dead-letter rows per input table, each with the reason
    :class:`KeyRow` gives it.
    """

    def __init__(
        self,
        query_column: str,
        fields: Sequence[str],
        provenance: Provenance,
        language_column: str | None = None,
        buckets: int = KEY_BUCKETS,
        spill: str | None = None,
    ):
        from bulkinfer.transforms.normalize_keys import KeyRow

        self._spill = spill
        self._writer = SpillWriter(spill)
        self._query_column = query_column
        self._fields = tuple(fields)
        self._language_column = language_column
        self._buckets = buckets
        # The per-row rules, for the rows that become dead letters (their reasons and messages) and odd column types.
        self._row = KeyRow(query_column, fields, provenance, language_column)
        self._unrecognised = Metrics.counter(METRICS_NAMESPACE, "language_values_unrecognised")

    def start_bundle(self) -> None:
        self._writer = SpillWriter(self._spill)

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._writer.finish()

    def process(self, table: pa.Table) -> Iterator[Any]:
        n = table.num_rows
        if n == 0:
            return
        query = table.column(self._query_column)
        if pa.types.is_string(query.type) or pa.types.is_large_string(query.type):
            keyed = self._key_strings(query)
        else:  # bytes to decode, numbers to refuse: row by row, as KeyRow does
            keyed = self._key_rows(table)
        dead = pc.is_null(keyed.column("key"))
        for name in self._fields:
            dead = pc.or_(dead, pc.is_null(table.column(name)))
        letters = []
        for row in table.filter(dead).to_pylist():
            for out in self._row.process(row):
                if not isinstance(out, pvalue.TaggedOutput):
                    raise AssertionError(f"KeyRow keyed a row the columnar rules dead-lettered: {row!r}")
                letters.append(out.value)
        if letters:
            yield pvalue.TaggedOutput(out.tag, pa.Table.from_pylist(letters, schema=DEAD_LETTER_SCHEMA))
        kept = pc.invert(dead)
        if pc.any(kept).as_py():
            yield from self._by_bucket(table.filter(kept), keyed.filter(kept))

    def _key_strings(self, query: pa.ChunkedArray) -> pa.Table:
        """Keys of a text column: the normaliser runs once per distinct spelling."""
        spellings = query.combine_chunks()
        encoded = spellings.dictionary_encode()
        keys = normalize_keys(encoded.dictionary)
        keys = pc.if_else(pc.equal(keys, ""), pa.scalar(None, pa.string()), keys)  # empty: a dead letter, KeyRow says why
        untidy = [" ".join(text.split()) != text for text in encoded.dictionary.to_pylist()]
        return pa.table(
            {
                "key": pc.take(keys, encoded.indices),
                "query": spellings,
                "untidy": pc.take(pa.array(untidy, pa.bool_()), encoded.indices),
            }
        )

    def _key_rows(self, table: pa.Table) -> pa.Table:
        keys: list[str | None] = []
        spellings: list[str | None] = []
        for row in table.select([self._query_column]).to_pylist():
            query, key, failure = self._row.diagnose(row, check_fields=False)
            keys.append(None if failure else key)
            spellings.append(None if failure else query)
        return pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "query": pa.array(spellings, pa.string()),
                "untidy": pa.array([q is not None and " ".join(q.split()) != q for q in spellings], pa.bool_()),
            }
        )

    def _languages(self, table: pa.Table) -> pa.Array:
        """Each row's language code (null: no vote), counting values that name no language."""
        if self._language_column is None:
            return pa.nulls(table.num_rows, pa.string())
        encoded = table.column(self._language_column).combine_chunks().dictionary_encode()
        distinct = encoded.dictionary.to_pylist()
        codes = [normalize_language(value) for value in distinct]
        unrecognised = pa.array(
            [
                code is None and not (isinstance(value, str) and value.strip().lower() in ("", "und"))
                for value, code in zip(distinct, codes, strict=True)
            ],
            pa.bool_(),
        )
        self._unrecognised.inc(int(pc.sum(pc.take(unrecognised, encoded.indices)).as_py() or 0))
        return pc.take(pa.array(codes, pa.string()), encoded.indices)

    def _by_bucket(self, table: pa.Table, keyed: pa.Table) -> Iterator[tuple[int, pa.Table]]:
        columns: dict[str, Any] = {
            "key": keyed.column("key"),
            "language": self._languages(table),
            "not_key": pc.not_equal(keyed.column("query"), keyed.column("key")),
            "untidy": keyed.column("untidy"),
            "query": keyed.column("query"),
            "fields_rank": self._fields_rank(table),
        }
        columns |= {field_column(name): table.column(name) for name in self._fields}
        rows = pa.table(columns)
        merged = merge_spellings(rows.append_column("rows", pa.array(np.ones(rows.num_rows, np.int64))), by_language=True)
        for bucket, spellings in split_by(merged, key_buckets(merged.column("key"), self._buckets)):
            yield from self._writer.add(bucket, spellings)

    def _fields_rank(self, table: pa.Table) -> pa.Array:
        if not self._fields:
            return pa.repeat(pa.scalar("", pa.string()), table.num_rows)
        values = table.select(list(self._fields)).to_pylist()
        # The old per-row rank, exactly: template values as JSON, ties between equal spellings broken by them.
        return pa.array([json.dumps(tuple((name, row[name]) for name in self._fields), default=repr) for row in values], pa.string())


def merge_spellings(spellings: pa.Table, *, by_language: bool) -> pa.Table:
    """Merges spelling rows: per key (and language, when ``by_language``), the summed ``rows`` and the best-ranked spelling.

    ``spellings`` has ``key``, ``language``, ``rows``, the rank columns and the
    template columns; the result has the same columns, one row per group.
    """
    group = ["key", "language"] if by_language else ["key"]
    ordered = spellings.sort_by([(name, "ascending") for name in _RANK])
    ordered = ordered.append_column("position", pa.array(np.arange(ordered.num_rows, dtype=np.int64)))
    grouped = ordered.group_by(group, use_threads=False).aggregate([("position", "min"), ("rows", "sum")])
    best = ordered.take(grouped.column("position_min")).drop_columns(["rows", "position"])
    return best.append_column("rows", grouped.column("rows_sum"))


class ToGroups(beam.DoFn):
    """Merges a bucket's spellings from every table into a key-group table: one row per key.

    The table has the columns of :data:`bulkinfer.format.records.GROUP_COLUMNS` and
    the template columns (``field:<name>``), each row a :class:`QueryGroup`.
    """

    def __init__(self, fields: Sequence[str]):
        self._fields = tuple(fields)

    def process(self, item: tuple[int, Any]) -> Iterator[pa.Table]:
        spellings = pa.concat_tables(read_spilled(item[1]), promote_options="permissive")
        by_language = merge_spellings(spellings, by_language=True)
        best = merge_spellings(by_language, by_language=False)
        votes = _commonest_language(by_language)
        language = pc.take(votes.column("language"), pc.index_in(best.column("key"), value_set=votes.column("key")))
        columns = {"key": best.column("key"), "query": best.column("query"), "language": language, "source_rows": best.column("rows")}
        yield pa.table(columns | {field_column(name): best.column(field_column(name)) for name in self._fields})


def _commonest_language(by_language: pa.Table) -> pa.Table:
    """Per key, the language most of its rows name; ties go to the smaller code, so every run agrees."""
    votes = by_language.select(["key", "language", "rows"]).filter(pc.is_valid(by_language.column("language")))
    ordered = votes.sort_by([("key", "ascending"), ("rows", "descending"), ("language", "ascending")])
    ordered = ordered.append_column("position", pa.array(np.arange(ordered.num_rows, dtype=np.int64)))
    first = ordered.group_by("key", use_threads=False).aggregate([("position", "min")])
    return ordered.take(first.column("position_min")).select(["key", "language"])
