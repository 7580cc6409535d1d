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

Two files per version, written at publish next to ``store.sqlite``::

    match.sqlite      meta(name, value)  -- JSON values: format, version, manifest digest, items, concepts, ...
                      items(id INTEGER PRIMARY KEY, item TEXT UNIQUE, claims BLOB)  -- claims: JSON [[concept, language], ...], ranked
    match.automaton   a pyahocorasick automaton of every item (value: the item id)
    match.claims      by item id, for phrase matches: item count, n + 1 offsets, item lengths, the claims as JSON

Exact matches are one indexed read of ``match.sqlite`` through a memory map (any
SQLite client can do it). Phrase matches read claims from ``match.claims`` through a
memory map, and need the automaton in memory: it is loaded on the first phrase
match, not when the index is opened; the automaton library keeps its trie in process
memory and offers no memory-mapped form.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
import sqlite3
import struct
import threading
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from bulkinfer.errors import TableError
from bulkinfer.keys import normalize_key

if TYPE_CHECKING:
    import pyarrow as pa

MATCH = "match.sqlite"
"""File name of a version's match index (exact lookups and the item claims)."""

AUTOMATON = "match.automaton"
"""File name of a version's phrase automaton, next to :data:`MATCH`."""

CLAIMS = "match.claims"
"""File name of the item claims by item id, read through a memory map by phrase matches."""

FORMAT = 1
"""Bumped when the layout of the two files changes; an index of another format is rebuilt, not read."""

ITEM_LANGUAGES = "item_languages"
"""Optional prediction column: the language each item was generated for, parallel to the output list."""

_MAX_PHRASE_CHARS = 0xFFFF
"""Items longer than this (code points) match exactly only; no real synonym is that long."""
_MAX_ITEMS = (1 << 31) - 1
"""The automaton stores 32-bit signed values: item ids must fit."""

_AMBIGUOUS_EXAMPLES = 5
_INSERT_BATCH = 10_000
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
    ambiguous_examples: tuple[tuple[str, tuple[str, ...]], ...]
    """Up to five ambiguous items with their concepts in rank order (most concepts first, then by item)."""

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``match`` section."""
        return {
            "items": self.items,
            "concepts": self.concepts,
            "ambiguous_items": self.ambiguous_items,
            "ambiguous_examples": [{"item": item, "concepts": list(concepts)} for item, concepts in self.ambiguous_examples],
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
    names = rows.column_names
    n = rows.num_rows
    keys = rows.column("key").to_pylist()
    lists = rows.column(output_column).to_pylist()
    languages = rows.column("language").to_pylist() if "language" in names else [None] * n
    item_languages = rows.column(ITEM_LANGUAGES).to_pylist() if ITEM_LANGUAGES in names else [None] * n
    normalised: dict[str, str] = {}  # answers repeat a lot across concepts: normalise each spelling once
    # (item, 0 for the concept's own key else 1, position in the answer, concept, language)
    entries: list[tuple[str, int, int, str, str | None]] = []
    for key, items, language, per_item in zip(keys, lists, languages, item_languages, strict=True):
        entries.append((key, 0, -1, key, language))
        for position, raw in enumerate(items or ()):
            if not raw:
                continue
            item = normalised.get(raw)
            if item is None:
                item = normalised[raw] = normalize_key(raw)
            if item:
                lang = per_item[position] if per_item is not None and position < len(per_item) else language
                entries.append((item, 0 if item == key else 1, position, key, lang))
    entries.sort(key=lambda e: (e[0], e[1], e[2], e[3]))
    claims: list[tuple[str, list[tuple[str, str | None]]]] = []
    for item, _, _, concept, language in entries:
        if claims and claims[-1][0] == item:
            ranked = claims[-1][1]
            if all(concept != c for c, _ in ranked):
                ranked.append((concept, language))
        else:
            claims.append((item, [(concept, language)]))
    return claims


def summarise_claims(claims: list[tuple[str, list[tuple[str, str | None]]]]) -> MatchSummary:
    """Counts items, concepts and ambiguous items of :func:`collect_claims`' result."""
    ambiguous = [(item, tuple(c for c, _ in ranked)) for item, ranked in claims if len(ranked) > 1]
    examples = sorted(ambiguous, key=lambda a: (-len(a[1]), a[0]))[:_AMBIGUOUS_EXAMPLES]
    concepts = {c for _, ranked in claims for c, _ in ranked}
    return MatchSummary(items=len(claims), concepts=len(concepts), ambiguous_items=len(ambiguous), ambiguous_examples=tuple(examples))


def match_summary(rows: pa.Table | None, output_column: str) -> dict[str, Any]:
    """The manifest's ``match`` section for a version's rows (zeros without rows)."""
    if rows is None:
        return MatchSummary(0, 0, 0, ()).to_dict()
    return summarise_claims(collect_claims(rows, output_column)).to_dict()


def build_match_index(directory: str | os.PathLike[str], rows: pa.Table, version: str, manifest: dict[str, Any]) -> MatchSummary:
    """Writes a version's ``match.sqlite`` and ``match.automaton`` into a local directory.

    The automaton is renamed into place first and the SQLite file last, so a
    directory whose ``match.sqlite`` exists holds a complete index (the SQLite
    metadata records the automaton's size, checked when it is loaded).

    Args:
        directory: local directory to write into (the version directory, or a cache).
        rows: the version's prediction rows.
        version: the version name.
        manifest: the version's manifest (its output column and digest are recorded).

    Returns:
        What the index holds.

    Raises:
        TableError: the version's output is not a list (labels match nothing), or
            its rows lack the output column.
    """
    import ahocorasick

    from bulkinfer.lookup.store import manifest_digest

    output = str(manifest.get("output_column", ""))
    if manifest.get("output_kind") != "list":
        raise TableError(f"version {version} answers {manifest.get('output_kind')!r}, not lists of items: it has no match index")
    if output not in rows.column_names or "key" not in rows.column_names:
        raise TableError(f"version {version} has no key or {output!r} column; columns: {', '.join(rows.column_names)}")
    claims = collect_claims(rows, output)
    if len(claims) > _MAX_ITEMS:
        raise TableError(f"version {version} has {len(claims)} distinct items; a match index holds at most {_MAX_ITEMS}")
    summary = summarise_claims(claims)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    automaton_tmp, sqlite_tmp = directory / f".{AUTOMATON}.{token}.tmp", directory / f".{MATCH}.{token}.tmp"
    claims_tmp = directory / f".{CLAIMS}.{token}.tmp"
    try:
        _write_claims(claims_tmp, [(min(len(item), _MAX_PHRASE_CHARS), orjson.dumps(ranked)) for item, ranked in claims])
        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        for item_id, (item, _) in enumerate(claims):
            if len(item) <= _MAX_PHRASE_CHARS:
                automaton.add_word(item, item_id)
        automaton.make_automaton()
        automaton.save(str(automaton_tmp))
        meta = {
            "format": FORMAT,
            "version": version,
            "manifest_digest": manifest_digest(manifest),
            "output_column": output,
            "automaton_bytes": automaton_tmp.stat().st_size,
            "claims_bytes": claims_tmp.stat().st_size,
            **summary.to_dict(),
        }
        db = sqlite3.connect(sqlite_tmp)
        try:
            db.execute("PRAGMA journal_mode = OFF")  # nothing else sees the file until the rename
            db.execute("PRAGMA synchronous = OFF")
            db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
            db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, item TEXT NOT NULL UNIQUE, claims BLOB NOT NULL)")
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v, ensure_ascii=False)) for k, v in meta.items()])
            for start in range(0, len(claims), _INSERT_BATCH):
                batch = claims[start : start + _INSERT_BATCH]
                db.executemany(
                    "INSERT INTO items VALUES (?, ?, ?)",
                    ((start + i, item, orjson.dumps(ranked)) for i, (item, ranked) in enumerate(batch)),
                )
            db.commit()
        finally:
            db.close()
        os.replace(automaton_tmp, directory / AUTOMATON)
        os.replace(claims_tmp, directory / CLAIMS)
        os.replace(sqlite_tmp, directory / MATCH)
    finally:
        for tmp in (automaton_tmp, claims_tmp, sqlite_tmp):
            tmp.unlink(missing_ok=True)
    return summary


_OFFSETS = struct.Struct("<QQ")
_LENGTH = struct.Struct("<H")


def _write_claims(path: Path, items: list[tuple[int, bytes]]) -> None:
    """Writes ``match.claims``, all little-endian: the item count n (uint64); n + 1 file
    offsets (uint64) delimiting each item's claims; each item's length in code points
    (uint16); then the JSON claims of each item, in item id order."""
    n = len(items)
    offsets = [8 * (n + 2) + 2 * n]
    for _, blob in items:
        offsets.append(offsets[-1] + len(blob))
    with path.open("wb") as f:
        f.write(struct.pack(f"<Q{n + 1}Q", n, *offsets))
        f.write(struct.pack(f"<{n}H", *(length for length, _ in items)))
        for _, blob in items:
            f.write(blob)


class MatchIndex:
    """A version's match index, read-only; safe to share between threads.

    Opening reads the SQLite metadata only. Exact matches read one row through a
    memory map; the phrase automaton is loaded on the first phrase match.
    """

    def __init__(self, directory: str | os.PathLike[str]):
        """Opens ``match.sqlite`` in a directory and reads its metadata.

        Raises:
            TableError: no index there, or one of another format.
        """
        self.directory = Path(directory)
        """The directory holding the two files."""
        path = self.directory / MATCH
        if not path.is_file():
            raise TableError(f"{self.directory} has no {MATCH}")
        # immutable=1: the file never changes after its rename, so SQLite takes no locks.
        self._uri = f"file:{quote(str(path.resolve()))}?mode=ro&immutable=1"
        self._size = path.stat().st_size
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._automaton: Any = None
        self._claims: mmap.mmap | None = None
        self._lengths_at = 0
        try:
            meta = {name: json.loads(value) for name, value in self._connection().execute("SELECT name, value FROM meta")}
        except sqlite3.DatabaseError as e:
            self.close()
            raise TableError(f"{path} is not a bulkinfer match index: {e}") from e
        if meta.get("format") != FORMAT:
            self.close()
            raise TableError(f"{path} is a match index of format {meta.get('format')}, this bulkinfer reads format {FORMAT}")
        self.meta: dict[str, Any] = meta
        """Version, manifest digest, item and ambiguity counts."""

    def __len__(self) -> int:
        return int(self.meta["items"])

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            db.execute("PRAGMA query_only = ON")
            db.execute(f"PRAGMA mmap_size = {self._size + (1 << 20)}")  # page reads without a read() call and a copy
            with self._lock:
                self._connections.append(db)
            self._local.db = db
        return db

    def load_automaton(self) -> Any:
        """The phrase automaton, loaded once (later calls return the same one).

        Raises:
            TableError: the automaton file is missing or not the one the index was written with.
        """
        if self._automaton is None:
            with self._lock:
                if self._automaton is None:
                    self._automaton = self._read_automaton()
        return self._automaton

    def _read_automaton(self) -> Any:
        import ahocorasick

        for name, size in ((AUTOMATON, "automaton_bytes"), (CLAIMS, "claims_bytes")):
            path = self.directory / name
            if not path.is_file() or path.stat().st_size != self.meta[size]:
                raise TableError(f"{path} is missing or was not written with {self.directory / MATCH}; rebuild the version's match index")
        with (self.directory / CLAIMS).open("rb") as f:
            # Only the pages of the claims a match touches are read; nothing is copied at open.
            self._claims = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        (count,) = struct.unpack_from("<Q", self._claims, 0)
        self._lengths_at = 8 * (count + 2)
        return ahocorasick.load(str(self.directory / AUTOMATON), orjson.loads)  # the deserialiser is unused for integer values

    def exact(self, key: str) -> list[dict[str, Any]]:
        """Matches of a normalised key that is itself an item (or a concept key), ranked; [] otherwise."""
        found = self._connection().execute("SELECT claims FROM items WHERE item = ?", (key,)).fetchone()
        if found is None:
            return []
        return [{"concept": c, "item": key, "language": lang, "start": 0, "end": len(key)} for c, lang in orjson.loads(found[0])]

    def phrases(self, key: str) -> list[dict[str, Any]]:
        """Every item inside a normalised key on token boundaries: longest first, non-overlapping.

        Returns:
            Matches in query order; an ambiguous item gives one match per concept, ranked.
        """
        if not key:
            return []
        spans: list[tuple[int, int, int]] = []  # (-length, start, id): longest first, then leftmost
        automaton = self.load_automaton()  # maps the claims file too
        claims, lengths_at = self._claims, self._lengths_at
        for end_index, item_id in automaton.iter(key):
            (length,) = _LENGTH.unpack_from(claims, lengths_at + 2 * item_id)
            end = end_index + 1
            start = end - length
            if is_boundary(key, start) and is_boundary(key, end):
                spans.append((-length, start, item_id))
        if not spans:
            return []
        spans.sort()
        taken: list[tuple[int, int, int]] = []
        for negative_length, start, item_id in spans:
            end = start - negative_length
            if all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, item_id))
        taken.sort()
        return [
            {"concept": concept, "item": key[start:end], "language": language, "start": start, "end": end}
            for start, end, item_id in taken
            for concept, language in self._claims_of(item_id)
        ]

    def match(self, key: str, exact: bool = False) -> list[dict[str, Any]]:
        """Phrase matches of a normalised key (or, with ``exact``, whole-key matches only)."""
        return self.exact(key) if exact else self.phrases(key)

    def _claims_of(self, item_id: int) -> list[list[str | None]]:
        # A slice of the memory map: a third of the time of an indexed SQLite read of the same row.
        start, end = _OFFSETS.unpack_from(self._claims, _OFFSETS.size // 2 * (item_id + 1))
        return orjson.loads(self._claims[start:end])

    def close(self) -> None:
        """Closes every connection and drops the automaton; later matches fail."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._automaton = None
            claims, self._claims = self._claims, None
        for db in connections:
            db.close()
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
    rows = layout.read_shards(vdir, layout.PREDICTIONS)
    if rows is None:
        raise TableError(f"{vdir} has no {layout.PREDICTIONS}-*.parquet files")
    return build_match_index(vdir, rows, version, manifest)


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
    rows = layout.read_shards(own, layout.PREDICTIONS)
    if rows is None:
        raise TableError(f"{own} has no {layout.PREDICTIONS}-*.parquet files")
    build_match_index(cached, rows, version, manifest)
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
