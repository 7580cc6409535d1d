"""The match index: which concept is a live query about?

A synonyms table maps a concept key to its items (``covid vaccine`` -> ``covid jab``,
``vacuna contra el covid``, ...). A live system needs the other direction: given
``"vacuna contra el covid cerca de mí"``, which concept does it (or a phrase inside
it) belong to? The match index answers that without a model:

- **exact**: the whole normalised query is an item, or a concept key;
- **phrase**: every item occurring inside the normalised query on token boundaries,
  longest first, non-overlapping. Text in scripts written without spaces (Chinese,
  Japanese, Thai, Lao, Khmer, Myanmar) matches on character boundaries.

Items are normalised with the job's ``normalize_key``, so queries and items meet in
the same form; match offsets (``start``, ``end``) are code-point offsets into that
normalised key.

**Ranking of an item claimed by several concepts** (all are returned, in this order):
the concept whose key *is* the item comes first; then concepts that list the item
earlier in their answer (models put the closest variants first); ties by concept key.

Three files per version, written at publish next to ``store.sqlite``::

    match.sqlite      meta(name, value)  -- JSON values: format, version, manifest digest, file sizes, items, concepts, ...
    match.trie        a MARISA trie (``marisa-trie``) of every normalised item; its key id is the item id
    match.claims      by item id: item count n, n + 1 offsets, then each item's claims as JSON [[concept, language], ...], ranked

Opening reads the SQLite metadata only. The trie and the claims are memory-mapped on
the first match, so a process reads only the pages its matches touch, and processes
serving the same version share them through the page cache. An exact match is one
trie lookup and one slice of the claims; a phrase match asks the trie, at each token
boundary of the query, which items the rest of the query starts with (each character
is a token boundary in scripts without spaces), keeps those that also end on a
boundary, then takes the longest first, left to right, without overlap. That finds
what an Aho–Corasick automaton over the items finds (every item with a boundary at both
ends); a static trie is used because it can be memory-mapped, where pyahocorasick's
automaton had to be unpickled into process memory (9-13 s and ~0.7 GiB for 1M items).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import re
import shutil
import sqlite3
import struct
import threading
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from bulkinfer.errors import TableError
from bulkinfer.keys import normalize_keys

if TYPE_CHECKING:
    import pyarrow as pa

MATCH = "match.sqlite"
"""File name of a version's match index (exact lookups and the item claims)."""

AUTOMATON = "match.trie"
"""File name of a version's item trie (memory-mapped), next to :data:`MATCH`."""

CLAIMS = "match.claims"
"""File name of the item claims by item id, read through a memory map."""

FORMAT = 2
"""Bumped when the layout of the files changes; an index of another format is passed over and
rebuilt into the cache, never read. 1: a pyahocorasick automaton loaded into memory, an
``items`` table in ``match.sqlite``; 2: a memory-mapped MARISA trie, claims by trie id."""

ITEM_LANGUAGES = "item_languages"
"""Optional prediction column: the language each item was generated for, parallel to the output list."""

_MAX_ITEMS = (1 << 32) - 1
"""A MARISA trie numbers its keys with 32-bit ids."""

_AMBIGUOUS_EXAMPLES = 5
_EXAMPLE_CONCEPTS = 10  # a generic item ("cheap") may be claimed by millions of concepts: the manifest names the first few
_LOG = logging.getLogger(__name__)

# Scripts written without spaces between words: any character boundary is a token boundary.
_NO_SPACE = re.compile(
    "["
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u312f"  # Bopomofo
    "\u31f0-\u31ff"  # Katakana extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003ffff"  # CJK extensions B and later
    "]"
)


def _word_char(ch: str) -> bool:
    # Combining marks (Devanagari vowel signs, Thai tone marks) belong to the letter before them.
    return ch.isalnum() or (not ch.isascii() and unicodedata.category(ch)[0] == "M")


def is_boundary(text: str, i: int) -> bool:
    """Whether position ``i`` of a normalised text is a token boundary.

    The ends of the text are; so is any position between two characters that are not
    both word characters (letters, digits, combining marks), and any position next to
    a character of a script written without spaces.
    """
    if i <= 0 or i >= len(text):
        return True
    before, after = text[i - 1], text[i]
    if before.isascii() and after.isascii():  # the common case, without a Unicode table lookup
        return not (before.isalnum() and after.isalnum())
    if not (_word_char(before) and _word_char(after)):
        return True
    return _NO_SPACE.match(before) is not None or _NO_SPACE.match(after) is not None


@dataclass(frozen=True)
class MatchSummary:
    """What the manifest records about a version's match index."""

    items: int
    """Distinct normalised items, concept keys included."""
    concepts: int
    """Concept keys with at least one item."""
    ambiguous_items: int
    """Items claimed by more than one concept."""
    ambiguous_examples: tuple[tuple[str, tuple[str, ...], int], ...]
    """Up to five ambiguous items (most concepts first, then by item), each with its first ten
    concepts in rank order and how many concepts claim it."""

    @classmethod
    def from_dict(cls, section: dict[str, Any]) -> MatchSummary:
        """The summary :meth:`to_dict` wrote (a manifest's ``match`` section, or an index's metadata)."""
        examples = tuple((e["item"], tuple(e["concepts"]), e["claimed_by"]) for e in section["ambiguous_examples"])
        return cls(section["items"], section["concepts"], section["ambiguous_items"], examples)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``match`` section."""
        return {
            "items": self.items,
            "concepts": self.concepts,
            "ambiguous_items": self.ambiguous_items,
            "ambiguous_examples": [
                {"item": item, "concepts": list(concepts), "claimed_by": claimed_by}
                for item, concepts, claimed_by in self.ambiguous_examples
            ],
        }


def collect_claims(rows: pa.Table, output_column: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Every normalised item of a version with the concepts claiming it, ranked; sorted by item.

    Each concept's key is an item of its own. An item keeps the language it was
    generated for (the ``item_languages`` column where the rows have one, else the
    row's ``language``); None when unknown.

    Args:
        rows: prediction rows with ``key`` and the list column ``output_column``
            (``language`` and ``item_languages`` optional).
        output_column: the task's output column.

    Returns:
        ``[(item, [(concept, language), ...]), ...]``, concepts in rank order (see the module docstring).
    """
    claims = _claim_table(rows, output_column)
    return [
        (item, list(zip(concepts, languages, strict=True)))
        for item, concepts, languages in zip(
            claims.column("item").to_pylist(),
            claims.column("concepts").to_pylist(),
            claims.column("languages").to_pylist(),
            strict=True,
        )
    ]


def _claim_table(rows: pa.Table, output_column: str) -> pa.Table:
    """:func:`collect_claims` as an Arrow table (``item``, ``concepts``, ``languages``: the
    claims' parallel lists, ranked), computed in Arrow: a million items take seconds, where
    a Python loop over them took most of the index build."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    names = rows.column_names
    keys = rows.column("key").combine_chunks().cast(pa.string())
    languages = rows.column("language").combine_chunks().cast(pa.string()) if "language" in names else pa.nulls(rows.num_rows, pa.string())
    answers = rows.column(output_column).combine_chunks()
    parent = pc.list_parent_indices(answers).to_numpy()
    position = np.arange(len(parent)) - _list_starts(answers)[parent]  # where in its answer each item stands
    items = pc.fill_null(normalize_keys(pc.list_flatten(answers)), "")
    language = languages.take(parent)
    if ITEM_LANGUAGES in names:
        per_item = rows.column(ITEM_LANGUAGES).combine_chunks()
        stated = position < _list_lengths(per_item)[parent]  # a shorter list leaves the rest to the row's language
        if stated.any():
            at = np.where(stated, _list_starts(per_item)[parent] + position, 0)
            language = pc.if_else(pa.array(stated), pc.list_flatten(per_item).cast(pa.string()).take(at), language)
    claimed = pc.fill_null(pc.not_equal(items, ""), False).to_numpy(zero_copy_only=False)
    # Strings become ranks that sort as the strings do (concept keys are items too: one
    # space), so that the ranking below is one numpy sort.
    every_item, item_rank = _ranks(pa.concat_arrays([keys, items.filter(pa.array(claimed))]))
    key_rank = item_rank[: len(keys)]
    concept_rank = np.concatenate([key_rank, key_rank[parent[claimed]]])
    own = (item_rank != concept_rank).astype(np.int8)  # 0 where the item is its concept's key
    at = np.concatenate([np.full(len(keys), -1, np.int64), position[claimed]])
    language = pa.concat_arrays([languages, language.filter(pa.array(claimed))])
    # The rank (module docstring); lexsort is stable, so equal claims keep row order, as before.
    ranked = np.lexsort((concept_rank, at, own, item_rank))
    # A concept claims an item once: its first claim in rank order.
    pair = item_rank[ranked] * np.int64(len(every_item) + 1) + concept_rank[ranked]
    ranked = ranked[np.sort(np.unique(pair, return_index=True)[1])]
    item = item_rank[ranked]
    starts = np.flatnonzero(np.r_[True, item[1:] != item[:-1]]) if len(item) else np.zeros(0, np.int64)
    offsets = pa.array(np.append(starts, len(item)), pa.int32())
    return pa.table(
        {
            "item": every_item.take(pa.array(item[starts])),
            "concepts": pa.ListArray.from_arrays(offsets, every_item.take(pa.array(concept_rank[ranked]))),
            "languages": pa.ListArray.from_arrays(offsets, language.take(pa.array(ranked))),
        }
    )


def _ranks(values: pa.Array) -> tuple[pa.Array, Any]:
    """The distinct strings of an array, sorted, and each value's place among them (numpy int64)."""
    import numpy as np
    import pyarrow.compute as pc

    encoded = values.dictionary_encode()
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    place = np.empty(len(order), np.int64)
    place[order] = np.arange(len(order))
    return encoded.dictionary.take(order), place[encoded.indices.to_numpy()]


def _list_lengths(lists: pa.Array) -> Any:
    import pyarrow.compute as pc

    return pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype("int64")


def _list_starts(lists: pa.Array) -> Any:
    """Where each list's values begin in ``list_flatten`` (null lists hold none)."""
    import numpy as np

    lengths = _list_lengths(lists)
    return np.cumsum(lengths) - lengths


def starts_run(values: pa.Array) -> Any:
    """Numpy booleans: True where a value differs from the one before it (and first)."""
    import numpy as np
    import pyarrow.compute as pc

    starts = np.ones(len(values), bool)
    if len(values) > 1:
        same = pc.fill_null(pc.equal(values.slice(1), values.slice(0, len(values) - 1)), False)
        starts[1:] = ~same.to_numpy(zero_copy_only=False)
    return starts


def _first_of_each(items: pa.ChunkedArray, concepts: pa.ChunkedArray) -> Any:
    """Row numbers of the first row of each (item, concept) pair, in order."""
    import numpy as np
    import pyarrow as pa

    rows = pa.table({"item": items, "concept": concepts, "row": np.arange(len(items))})
    rows = rows.sort_by([("item", "ascending"), ("concept", "ascending"), ("row", "ascending")])
    pair = starts_run(rows.column("item").combine_chunks()) | starts_run(rows.column("concept").combine_chunks())
    return np.sort(rows.column("row").to_numpy()[pair])


def _claims_json(claims: pa.Table) -> pa.Array:
    """Each item's claims as the JSON ``[[concept, language], ...]``, built in Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def text(literal: str) -> pa.Scalar:
        return pa.scalar(literal, pa.large_string())

    concepts, languages = claims.column("concepts").combine_chunks(), claims.column("languages").combine_chunks()
    pairs = pc.binary_join_element_wise(
        text("["), _json_strings(concepts.flatten()), text(","), _json_strings(languages.flatten()), text("]"), text("")
    )
    offsets = pc.subtract(concepts.offsets, concepts.offsets[0])  # flatten() starts at the first list's values
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, pairs), text(","))
    return pc.binary_join_element_wise(text("["), joined, text("]"), text(""))


def _json_strings(values: pa.Array) -> pa.Array:
    """JSON literals of strings (``null`` for nulls); each distinct string is encoded once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = values.cast(pa.string()).dictionary_encode()
    # Large strings: the claims of a few tens of millions of items pass 2 GiB of JSON.
    literals = pa.array([orjson.dumps(s).decode() for s in encoded.dictionary.to_pylist()], pa.large_string())
    return pc.fill_null(literals.take(encoded.indices), "null")


def summarise_claims(claims: list[tuple[str, list[tuple[str, str | None]]]]) -> MatchSummary:
    """Counts items, concepts and ambiguous items of :func:`collect_claims`' result."""
    ambiguous = [(item, tuple(c for c, _ in ranked)) for item, ranked in claims if len(ranked) > 1]
    top = sorted(ambiguous, key=lambda a: (-len(a[1]), a[0]))[:_AMBIGUOUS_EXAMPLES]
    examples = [(item, names[:_EXAMPLE_CONCEPTS], len(names)) for item, names in top]
    concepts = {c for _, ranked in claims for c, _ in ranked}
    return MatchSummary(items=len(claims), concepts=len(concepts), ambiguous_items=len(ambiguous), ambiguous_examples=tuple(examples))


def _summarise_table(claims: pa.Table) -> MatchSummary:
    """:func:`summarise_claims` of :func:`_claim_table`'s result, in Arrow."""
    import pyarrow.compute as pc

    concepts = claims.column("concepts")
    counts = pc.list_value_length(concepts)
    ambiguous = claims.filter(pc.greater(counts, 1))
    ambiguous = ambiguous.append_column("order", pc.negate(pc.list_value_length(ambiguous.column("concepts"))))
    examples = ambiguous.sort_by([("order", "ascending"), ("item", "ascending")]).slice(0, _AMBIGUOUS_EXAMPLES)
    return MatchSummary(
        items=claims.num_rows,
        concepts=len(pc.unique(pc.list_flatten(concepts))) if claims.num_rows else 0,
        ambiguous_items=ambiguous.num_rows,
        ambiguous_examples=tuple(
            (item, tuple(names[:_EXAMPLE_CONCEPTS]), len(names))
            for item, names in zip(examples.column("item").to_pylist(), examples.column("concepts").to_pylist(), strict=True)
        ),
    )


def match_summary(rows: pa.Table | None, output_column: str, keep_in: str | None = None) -> dict[str, Any]:
    """The manifest's ``match`` section for a version's rows (zeros without rows).

    Args:
        rows: the version's prediction rows.
        output_column: the task's output column.
        keep_in: a local version directory whose rows these are, all of them, as lookups
            see them (no fan-out): the claims are kept there (:data:`SAVED_CLAIMS`) for
            :func:`write_match_index` to build the index from at publish, instead of
            collecting them from the shards a second time.
    """
    if rows is None:
        return MatchSummary(0, 0, 0, ()).to_dict()
    claims = _claim_table(rows, output_column)
    if keep_in is not None and "://" not in keep_in:
        _save_claims(keep_in, claims, output_column)
    return _summarise_table(claims).to_dict()


SAVED_CLAIMS = ".match-claims.arrow"
"""File in a version directory: the claims :func:`match_summary` collected for the manifest (Arrow
IPC), read by :func:`write_match_index` at publish and deleted there. Its metadata names the
prediction shards (and their sizes) it was collected from; it is used only while they are the same."""


def _shards_signature(vdir: str) -> str:
    """The names and sizes of a local version's prediction shards: what its claims were collected from."""
    from bulkinfer.format import layout

    return json.dumps([[os.path.basename(path), os.path.getsize(path)] for path in layout.shard_paths(vdir, layout.PREDICTIONS)])


def _save_claims(vdir: str, claims: pa.Table, output_column: str) -> None:
    import pyarrow as pa

    meta = {b"shards": _shards_signature(vdir).encode(), b"output_column": output_column.encode(), b"format": str(FORMAT).encode()}
    target = Path(vdir) / SAVED_CLAIMS
    tmp = target.with_name(f"{SAVED_CLAIMS}.{uuid.uuid4().hex}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, claims.schema.with_metadata(meta)) as writer:
            writer.write_table(claims)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _saved_claims(vdir: str, output_column: str) -> pa.Table | None:
    """The claims :func:`match_summary` kept in a version directory, memory-mapped; None where there are
    none, or they were collected from other shards or for another output column."""
    import pyarrow as pa

    path = Path(vdir) / SAVED_CLAIMS
    if not path.is_file():
        return None
    try:
        claims = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    except (OSError, pa.ArrowInvalid) as e:
        _LOG.warning("passing over %s (%s): collecting the claims from the shards", path, e)
        return None
    meta = claims.schema.metadata or {}
    wanted = {b"shards": _shards_signature(vdir).encode(), b"output_column": output_column.encode(), b"format": str(FORMAT).encode()}
    return claims if all(meta.get(name) == value for name, value in wanted.items()) else None


def drop_saved_claims(vdir: str) -> None:
    """Deletes the claims :func:`match_summary` kept in a version directory, if any."""
    if "://" not in vdir:
        (Path(vdir) / SAVED_CLAIMS).unlink(missing_ok=True)


def build_match_index(
    directory: str | os.PathLike[str], rows: pa.Table | None, version: str, manifest: dict[str, Any], claims: pa.Table | None = None
) -> MatchSummary:
    """Writes a version's ``match.sqlite``, ``match.trie`` and ``match.claims`` into a local directory.

    The trie and the claims are renamed into place first and the SQLite file last, so
    a directory whose ``match.sqlite`` exists holds a complete index (its metadata
    records the other two files' sizes, checked when they are mapped).

    Args:
        directory: local directory to write into (the version directory, or a cache).
        rows: the version's prediction rows (as lookups see them); None with ``claims``.
        version: the version name.
        manifest: the version's manifest (its output column and digest are recorded).
        claims: the claims of those rows, where they were collected before (the manifest's summary).

    Returns:
        What the index holds.

    Raises:
        TableError: the version's output is not a list (labels match nothing), or
            its rows lack the output column.
    """
    import marisa_trie
    import numpy as np
    import pyarrow as pa

    from bulkinfer.lookup.store import manifest_digest

    output = str(manifest.get("output_column", ""))
    if manifest.get("output_kind") != "list":
        raise TableError(f"version {version} answers {manifest.get('output_kind')!r}, not lists of items: it has no match index")
    if claims is None:
        if rows is None or output not in rows.column_names or "key" not in rows.column_names:
            found = ", ".join(rows.column_names) if rows is not None else "none"
            raise TableError(f"version {version} has no key or {output!r} column; columns: {found}")
        claims = _claim_table(rows, output)
    if claims.num_rows > _MAX_ITEMS:
        raise TableError(f"version {version} has {claims.num_rows} distinct items; a match index holds at most {_MAX_ITEMS}")
    summary = _summarise_table(claims)
    directory = Path(directory)
    trie_tmp, claims_tmp, sqlite_tmp = _temporaries(directory)
    try:
        items = claims.column("item")
        # One trie level instead of marisa's default three: 11 MiB instead of 7 per 1M items, and
        # each prefix walk of a phrase match ~15% faster (fewer levels to descend). The items go in as
        # Python strings a slice at a time, never all at once (+300 MB at 4M items).
        trie = marisa_trie.Trie(_item_strings(items), num_tries=1)
        # The trie numbers its keys in its own order: the claims file is laid out by that number.
        ids = np.fromiter((trie.key_id(item) for item in _item_strings(items)), np.int64, len(items))
        by_id = np.empty(len(items), np.int64)
        by_id[ids] = np.arange(len(items))
        trie.save(str(trie_tmp))
        del trie, ids
        _write_claims(claims_tmp, _claims_json(claims).take(pa.array(by_id)))
        meta = {
            "format": FORMAT,
            "version": version,
            "manifest_digest": manifest_digest(manifest),
            "output_column": output,
            # What a later version with the same answers checks to carry these files forward (_carry_match_index).
            "answers_digest": manifest.get("answers_digest"),
            "trie_bytes": trie_tmp.stat().st_size,
            "claims_bytes": claims_tmp.stat().st_size,
            "trie_sha256": _file_sha256(trie_tmp),
            "claims_sha256": _file_sha256(claims_tmp),
            **summary.to_dict(),
        }
        _install(directory, trie_tmp, claims_tmp, sqlite_tmp, meta)
    finally:
        for tmp in (trie_tmp, claims_tmp, sqlite_tmp):
            tmp.unlink(missing_ok=True)
    return summary


def _item_strings(items: pa.ChunkedArray | pa.Array, slice_rows: int = 1 << 16) -> Iterator[str]:
    """The items as Python strings, converted a slice at a time."""
    for start in range(0, len(items), slice_rows):
        yield from items.slice(start, slice_rows).to_pylist()


def _carry_match_index(
    directory: str | os.PathLike[str], previous: str | os.PathLike[str], version: str, manifest: dict[str, Any]
) -> MatchSummary | None:
    """Writes a version's match index as a copy of the previous version's, where that one was built from the same answers.

    The trie and the claims depend on the rows' keys, languages and answers alone: a
    version whose ``answers_digest`` is the one the previous index records gets its files,
    checked against the SHA-256 digests recorded with them, and metadata of its own.

    Returns:
        What the index holds; None where there is nothing to carry (no index there, another
        output column or other answers, files damaged): the caller builds one.
    """
    answers = manifest.get("answers_digest")
    try:
        old = MatchIndex(previous)
    except TableError:
        return None
    meta = old.meta
    if not answers or meta.get("answers_digest") != answers or meta.get("output_column") != manifest.get("output_column"):
        return None
    if not (meta.get("trie_sha256") and meta.get("claims_sha256")):
        return None  # an index written before the digests were recorded: nothing to check a copy against
    from bulkinfer.lookup.store import manifest_digest

    directory = Path(directory)
    trie_tmp, claims_tmp, sqlite_tmp = _temporaries(directory)
    try:
        for name, tmp, digest in ((AUTOMATON, trie_tmp, "trie_sha256"), (CLAIMS, claims_tmp, "claims_sha256")):
            shutil.copyfile(Path(previous) / name, tmp)
            if _file_sha256(tmp) != meta[digest]:
                _LOG.warning("not carrying the match index of %s forward: its %s is damaged; building one", previous, name)
                return None
        _install(directory, trie_tmp, claims_tmp, sqlite_tmp, meta | {"version": version, "manifest_digest": manifest_digest(manifest)})
    except OSError as e:
        _LOG.warning("not carrying the match index of %s forward (%s); building one", previous, e)
        return None
    finally:
        for tmp in (trie_tmp, claims_tmp, sqlite_tmp):
            tmp.unlink(missing_ok=True)
    _LOG.info("match index of version %s: the one of %s, carried forward (the same answers)", version, previous)
    return MatchSummary.from_dict(meta)


def _temporaries(directory: Path) -> tuple[Path, Path, Path]:
    """Temporary names in ``directory`` (created if needed) for the trie, the claims and the SQLite file of an index."""
    directory.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    return tuple(directory / f".{name}.{token}.tmp" for name in (AUTOMATON, CLAIMS, MATCH))  # type: ignore[return-value]


def _install(directory: Path, trie_tmp: Path, claims_tmp: Path, sqlite_tmp: Path, meta: dict[str, Any]) -> None:
    """Writes the metadata file and renames the three files into place, the SQLite file last (it marks a complete index)."""
    db = sqlite3.connect(sqlite_tmp)
    try:
        db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v, ensure_ascii=False)) for k, v in meta.items()])
        db.commit()
    finally:
        db.close()
    os.replace(trie_tmp, directory / AUTOMATON)
    os.replace(claims_tmp, directory / CLAIMS)
    os.replace(sqlite_tmp, directory / MATCH)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


_OFFSET = struct.Struct("<Q")
_OFFSETS = struct.Struct("<QQ")


def _write_claims(path: Path, blobs: pa.Array) -> None:
    """Writes ``match.claims``, all little-endian: the item count n (uint64); n + 1 file
    offsets (uint64) delimiting each item's claims; then the JSON claims of each item, in
    item id order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(blobs)
    lengths = pc.binary_length(blobs).to_numpy().astype(np.uint64) if n else np.zeros(0, np.uint64)
    offsets = np.empty(n + 2, "<u8")
    offsets[0], offsets[1] = n, 8 * (n + 2)
    np.cumsum(lengths, out=offsets[2:])
    offsets[2:] += offsets[1]
    with path.open("wb") as f:
        f.write(offsets.tobytes())
        if n:
            data = blobs.cast(pa.large_binary())
            begin = int(np.frombuffer(data.buffers()[1], "<i8")[data.offset])  # the values are contiguous, in order
            f.write(memoryview(data.buffers()[2])[begin : begin + int(lengths.sum())])


class _Joining(dict[int, str]):
    """Code point -> ``"j"`` where the character joins its neighbours into a word (a letter,
    digit or combining mark of a script written with spaces), else ``"s"``; filled as
    characters are met, for ``str.translate``."""

    def __missing__(self, code_point: int) -> str:
        if len(self) >= _JOINING_CACHE:  # a bound on what odd input can make it hold
            self.clear()
        ch = chr(code_point)
        kind = self[code_point] = "j" if _word_char(ch) and _NO_SPACE.match(ch) is None else "s"
        return kind


_JOINING_CACHE = 1 << 16
_JOINING = _Joining()
_SEPARATES = re.compile("s")


def boundaries(text: str) -> set[int]:
    """Every position of a normalised text that :func:`is_boundary` holds for, at once: the
    two ends, and both sides of each character that does not join its neighbours."""
    if text.isascii() and text.replace(" ", "").isalnum():  # the common case: words and single spaces
        cuts, at = set(), 0
        for word in text.split(" "):
            cuts.add(at)
            at += len(word)
            cuts.add(at)
            at += 1
        return cuts
    cuts = {0, len(text)}
    for found in _SEPARATES.finditer(text.translate(_JOINING)):
        at = found.start()
        cuts.add(at)
        cuts.add(at + 1)
    return cuts


class MatchIndex:
    """A version's match index, read-only; safe to share between threads.

    Opening reads the SQLite metadata only; the trie and the claims are memory-mapped
    on the first match (:meth:`load_automaton`), and only the pages a match touches are
    ever read.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        """Opens ``match.sqlite`` in a directory and reads its metadata.

        Raises:
            TableError: no index there, or one of another format.
        """
        self.directory = Path(directory)
        """The directory holding the three files."""
        path = self.directory / MATCH
        if not path.is_file():
            raise TableError(f"{self.directory} has no {MATCH}")
        self._lock = threading.Lock()
        self._trie: Any = None
        self._claims: mmap.mmap | None = None
        # immutable=1: the file never changes after its rename, so SQLite takes no locks.
        uri = f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1"
        try:
            db = sqlite3.connect(uri, uri=True)
            try:
                meta = {name: json.loads(value) for name, value in db.execute("SELECT name, value FROM meta")}
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            raise TableError(f"{path} is not a bulkinfer match index: {e}") from e
        if meta.get("format") != FORMAT:
            raise TableError(f"{path} is a match index of format {meta.get('format')}, this bulkinfer reads format {FORMAT}")
        self.meta: dict[str, Any] = meta
        """Version, manifest digest, item and ambiguity counts."""

    def __len__(self) -> int:
        return int(self.meta["items"])

    def load_automaton(self) -> Any:
        """Maps the trie and the claims (once; later calls return the same trie).

        Nothing is read into memory here: pages are read as matches touch them. ``serve``
        calls this before it swaps a version in, so a damaged index fails there.

        Raises:
            TableError: a file is missing or not the one the index was written with.
        """
        if self._trie is None:
            with self._lock:
                if self._trie is None:
                    self._claims, self._trie = self._map()
        return self._trie

    def _map(self) -> tuple[mmap.mmap, Any]:
        import marisa_trie

        for name, size in ((AUTOMATON, "trie_bytes"), (CLAIMS, "claims_bytes")):
            path = self.directory / name
            if not path.is_file() or path.stat().st_size != self.meta[size]:
                raise TableError(f"{path} is missing or was not written with {self.directory / MATCH}; rebuild the version's match index")
        with (self.directory / CLAIMS).open("rb") as f:
            claims = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        trie = marisa_trie.Trie()
        try:
            trie.mmap(str(self.directory / AUTOMATON))
        except Exception as e:  # the library raises bare RuntimeErrors for a damaged file
            claims.close()
            raise TableError(f"{self.directory / AUTOMATON} is not a readable trie ({e}); rebuild the version's match index") from e
        return claims, trie

    def exact(self, key: str) -> list[dict[str, Any]]:
        """Matches of a normalised key that is itself an item (or a concept key), ranked; [] otherwise."""
        item_id = self.load_automaton().get(key) if key else None
        if item_id is None:
            return []
        return [{"concept": c, "item": key, "language": lang, "start": 0, "end": len(key)} for c, lang in self._claims_of(item_id)]

    def phrases(self, key: str) -> list[dict[str, Any]]:
        """Every item inside a normalised key on token boundaries: longest first, non-overlapping.

        Returns:
            Matches in query order; an ambiguous item gives one match per concept, ranked.
        """
        if not key:
            return []
        trie = self.load_automaton()
        cuts = boundaries(key)
        n = len(key)
        spans: list[tuple[int, int, int, int]] = []  # (-length, start, end, id): longest first, then leftmost
        for start in cuts:
            # Normalised items never start with a space; every other boundary may start one.
            if start == n or key[start] == " ":
                continue
            for item, item_id in trie.iter_prefixes_with_ids(key[start:]):
                end = start + len(item)
                if end in cuts:
                    spans.append((start - end, start, end, item_id))
        if not spans:
            return []
        spans.sort()
        used = bytearray(n)  # 1 where a longer (or as long, further left) match was taken
        taken: list[tuple[int, int, int]] = []
        for _, start, end, item_id in spans:
            if used.find(1, start, end) < 0:
                used[start:end] = b"\x01" * (end - start)
                taken.append((start, end, item_id))
        taken.sort()
        claims = self._claims
        if claims is None:
            raise TableError(f"the match index in {self.directory} is closed")
        found = []
        for start, end, item_id in taken:  # _claims_of, inlined: this loop is a fifth of a match's time
            at, until = _OFFSETS.unpack_from(claims, _OFFSET.size * (item_id + 1))
            item = key[start:end]
            for concept, language in orjson.loads(claims[at:until]):
                found.append({"concept": concept, "item": item, "language": language, "start": start, "end": end})
        return found

    def match(self, key: str, exact: bool = False) -> list[dict[str, Any]]:
        """Phrase matches of a normalised key (or, with ``exact``, whole-key matches only)."""
        return self.exact(key) if exact else self.phrases(key)

    def _claims_of(self, item_id: int) -> list[list[str | None]]:
        claims = self._claims
        if claims is None:
            raise TableError(f"the match index in {self.directory} is closed")
        start, end = _OFFSETS.unpack_from(claims, _OFFSET.size * (item_id + 1))
        return orjson.loads(claims[start:end])

    def close(self) -> None:
        """Unmaps the trie and the claims; later matches map them again."""
        with self._lock:
            claims, self._claims, self._trie = self._claims, None, None
        if claims is not None:
            claims.close()


def write_match_index(table: str, version: str) -> MatchSummary | None:
    """Builds a version's match index into its directory, from its Parquet shards (local tables).

    The job calls this at publish, after the store. Versions whose output is not a
    list get none (None is returned). Remote tables get their index built into the
    local cache on first use instead (:func:`open_match_index`).
    """
    from bulkinfer.format import layout

    vdir = layout.version_dir(table, version)
    manifest = layout.read_manifest(vdir)
    if manifest.get("output_kind") != "list" or "://" in vdir:
        return None
    previous = manifest.get("previous_version")
    carried = _carry_match_index(vdir, layout.version_dir(table, previous), version, manifest) if previous else None
    if carried is not None:
        drop_saved_claims(vdir)
        return carried
    # The claims the manifest's summary collected, where it kept them: the shards are not read again.
    saved = _saved_claims(vdir, str(manifest.get("output_column", "")))
    if saved is not None:
        summary = build_match_index(vdir, None, version, manifest, claims=saved)
        del saved
        drop_saved_claims(vdir)
        return summary
    from bulkinfer.lookup.union import read_lookup_rows  # union names match's columns: imported here, not at the top

    return build_match_index(vdir, read_lookup_rows(vdir, manifest), version, manifest)


def open_match_index(table: str, version: str, manifest: dict[str, Any], cache_dir: str | os.PathLike[str] | None = None) -> MatchIndex:
    """Opens a version's match index; builds it once into the cache where the version has none.

    The version's own index is read when the table is local and it was written from
    this manifest; otherwise an index built from the Parquet shards into
    ``$BULKINFER_CACHE/matches/`` (default ``~/.cache/bulkinfer/matches/``).

    Raises:
        TableError: the version answers labels, not lists (it has no match index),
            or has no prediction shards to build from.
    """
    import hashlib

    from bulkinfer.format import layout
    from bulkinfer.lookup.store import manifest_digest

    if manifest.get("output_kind") != "list":
        raise TableError(
            f"{table} version {version} answers {manifest.get('output_kind')!r}, not lists of items: only list tasks have a match index"
        )
    digest = manifest_digest(manifest)
    own = layout.version_dir(table, version)
    if "://" not in own and os.path.isfile(os.path.join(own, MATCH)):
        index = _open_matching(own, version, digest)
        if index is not None:
            return index
    base = Path(cache_dir) if cache_dir is not None else layout.local_cache_dir() / "matches"
    location = table if "://" in table else os.path.abspath(table)
    cached = base / hashlib.sha256(location.encode("utf-8")).hexdigest()[:16] / f"{version}-{digest[:16]}"
    if (cached / MATCH).is_file():
        index = _open_matching(cached, version, digest)
        if index is not None:
            return index
    _LOG.info("building the match index of %s version %s into %s (once)", table, version, cached)
    from bulkinfer.lookup.union import read_lookup_rows

    build_match_index(cached, read_lookup_rows(own, manifest), version, manifest)
    return MatchIndex(cached)


def _open_matching(directory: str | os.PathLike[str], version: str, digest: str) -> MatchIndex | None:
    try:
        index = MatchIndex(directory)
    except TableError as e:
        _LOG.warning("passing over %s: %s", directory, e)
        return None
    if index.meta.get("version") == version and index.meta.get("manifest_digest") == digest:
        return index
    _LOG.warning("passing over the match index in %s: built from another manifest of version %s", directory, version)
    index.close()
    return None
