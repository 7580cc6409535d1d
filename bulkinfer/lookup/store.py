"""The embedded lookup store: one version of a table as a single read-only SQLite file.

A live system cannot read a million Parquet rows into Python objects every time it
starts. The store holds the same rows keyed by ``key`` in a ``WITHOUT ROWID`` B-tree,
so opening it reads one page of metadata and a lookup is one indexed read plus one
JSON decode::

    meta(name TEXT PRIMARY KEY, value TEXT)   -- JSON values: format, version, rows, columns, constants, ...
    rows(k TEXT PRIMARY KEY, v BLOB)          -- v: JSON array of the row's varying columns, in meta "columns" order

Columns that hold one value for the whole version (model digest, engine, task
fingerprint, usually the model) are kept once in ``meta.constants`` instead of in
every row. Any SQLite client reads the file::

    sqlite3 store.sqlite "SELECT v FROM rows WHERE k = 'covid vaccine'"

The job writes ``versions/<version>/store.sqlite`` before it publishes the version
(:func:`write_store`). Versions without one, and versions of remote tables, get a
store built or downloaded once into a local cache (:func:`open_store`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from bulkinfer.errors import TableError
from bulkinfer.format import fs, layout
from bulkinfer.keys import strings_holding

if TYPE_CHECKING:
    import pyarrow as pa

STORE = "store.sqlite"
"""File name of a version's store, next to its Parquet shards."""

FORMAT = 1
"""Bumped when the file layout changes; a store of another format is rebuilt, not read."""

_INSERT_BATCH = 10_000
# Keys per ``IN (?, ...)`` statement, well under SQLite's 32766 bound parameters. One
# statement per batch beat one per key and a single JSON-array parameter (json_each).
_BATCH_KEYS = 500
_LOG = logging.getLogger(__name__)


def manifest_digest(manifest: dict[str, Any]) -> str:
    """A digest of a version's manifest; a store records the one it was built from."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def build_store(
    path: str | os.PathLike[str], rows: pa.Table, version: str, manifest: dict[str, Any], previous: str | os.PathLike[str] | None = None
) -> int:
    """Writes the store of one version to a local file, atomically (temporary file, then rename).

    A rerun whose rows are the previous version's, value for value (an unchanged corpus,
    every answer reused), would write the same B-tree again: where ``previous`` is a
    store of that content (:func:`carry_store`), the file is copied and only its metadata
    rewritten.

    Args:
        path: local file to write; replaced if present.
        rows: the version's prediction rows (a ``key`` column and the rest).
        version: the version name.
        manifest: the version's manifest (its digest and output column are recorded).
        previous: the store of the version this one follows, to carry forward when it holds these very rows.

    Returns:
        The number of rows written.

    Raises:
        TableError: the rows have no ``key`` column or a key appears twice.
    """
    import pyarrow.compute as pc

    if "key" not in rows.column_names:
        raise TableError(f"version {version} has no key column; columns: {', '.join(rows.column_names)}")
    if previous is not None and carry_store(path, previous, rows.to_batches(_INSERT_BATCH), rows.num_rows, version, manifest):
        return rows.num_rows
    keys = rows.column("key")
    if rows.num_rows > 1 and not pc.all(pc.less(keys[:-1], keys[1:])).as_py():
        rows = rows.take(pc.sort_indices(rows, [("key", "ascending")]))  # B-tree pages fill completely in key order
    constants: dict[str, Any] = {}
    varying: list[str] = []
    for name in rows.column_names:
        if name == "key":
            continue
        if _constant(rows.column(name)):
            constants[name] = rows.column(name)[0].as_py()
        else:
            varying.append(name)
    meta = _base_meta(version, manifest, rows.num_rows) | {"columns": varying, "constants": constants}
    with _replacing(path) as tmp:
        _write_rows(tmp, rows, varying, meta)
    return rows.num_rows


def _base_meta(version: str, manifest: dict[str, Any], rows: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": version,
        "manifest_digest": manifest_digest(manifest),
        "output_column": manifest.get("output_column"),
        "output_kind": manifest.get("output_kind"),
        "rows": rows,
    }


@contextlib.contextmanager
def _replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces it when the block ends well, and is removed when not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_rows(tmp: Path, rows: pa.Table, varying: list[str], meta: dict[str, Any]) -> None:
    """A new store file: the metadata (with the digest of the rows written) and every row, in key order."""
    digest = _store_digest(varying, meta)
    db = sqlite3.connect(tmp)
    try:
        # Nothing else sees the file until the rename: no journal, no syncs.
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
        db.execute("CREATE TABLE rows (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        for batch in rows.to_batches(_INSERT_BATCH):
            keys = batch.column("key")
            encoded = _encoded_text(batch, varying)
            digest.update_encoded(keys, encoded)
            try:
                db.executemany("INSERT INTO rows VALUES (?, ?)", zip(keys.to_pylist(), encoded.to_pylist(), strict=True))
            except sqlite3.IntegrityError as e:
                raise TableError(f"version {meta['version']} holds a key twice ({e}); its prediction shards are inconsistent") from e
        values = meta | {"rows_digest": digest.hexdigest()}
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(name, json.dumps(value, ensure_ascii=False)) for name, value in values.items()])
        db.commit()
    finally:
        db.close()


def carry_store(
    path: str | os.PathLike[str],
    previous: str | os.PathLike[str],
    batches: Iterable[pa.RecordBatch],
    rows: int,
    version: str,
    manifest: dict[str, Any],
) -> bool:
    """Writes ``path`` as a copy of ``previous`` with this version's metadata, where ``previous`` holds exactly these rows.

    The rows come a batch at a time, in any order (a version's shards a row group at a
    time: memory for one batch): ``previous`` must be a readable store of this format
    and output with as many rows, whose constant columns every row here repeats and
    whose other columns hash, as the store encodes them, to its recorded ``rows_digest``
    (:class:`RowsDigest`); and it must pass SQLite's ``quick_check`` (a damaged page is
    never carried forward).

    Returns:
        Whether it was carried; False leaves ``path`` as it was.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        old = Store(previous)
    except (TableError, OSError):
        return False  # none, or not readable as a store: build one
    meta = _base_meta(version, manifest, rows)
    try:
        before = old.meta
        same_kind = all(before.get(name) == meta[name] for name in ("format", "rows", "output_column", "output_kind"))
        if not same_kind or not before.get("rows_digest"):
            return False
        varying, constants = list(before.get("columns") or []), dict(before.get("constants") or {})
        meta |= {"columns": varying, "constants": constants}
        names = {"key", *varying, *constants}
        digest = _store_digest(varying, meta)
        for batch in batches:
            if set(batch.column_names) != names:
                return False
            for name, value in constants.items():
                column = batch.column(name)
                if column.null_count or not pc.all(pc.equal(column, value)).as_py():
                    return False
            digest.update_encoded(batch.column("key"), _encoded_text(batch, varying))
        if digest.hexdigest() != before["rows_digest"]:
            return False
        old.check_integrity()  # a damaged page would be copied along: never carry one forward
    except TableError as e:
        _LOG.warning("not carrying %s forward: %s", previous, e)
        return False
    except pa.ArrowException:  # a column here of another type than the constant it should repeat
        return False
    finally:
        old.close()
    with _replacing(path) as tmp:
        shutil.copyfile(previous, tmp)
        db = sqlite3.connect(tmp)
        try:
            encoded = [(name, json.dumps(value, ensure_ascii=False)) for name, value in meta.items()]  # rows_digest stays
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", encoded)
            db.commit()
        finally:
            db.close()
    _LOG.info("store of version %s: the rows of %s, carried forward", version, previous)
    return True


class RowsDigest:
    """A SHA-256 digest of rows' values that does not depend on the order the rows come in, fed a batch at a time.

    Each row's text (its key as a JSON string, then its values of ``columns`` as the
    store encodes them, :func:`_encoded_text`) is hashed alone; the digest is the
    SHA-256 of the salt and the sum of the row hashes modulo 2**256. The same rows in
    any order and in any cut into batches give the same digest, so a version's rows can
    be hashed a row group at a time, in whatever order its shards hold them, with memory
    for one batch. The job records the digest of a version's answers in its manifest and
    the store the digest of its rows, so that a rerun can tell that its rows are the
    previous version's.
    """

    def __init__(self, columns: Sequence[str], salt: str = ""):
        """Args:
        columns: the columns hashed besides the key (those a batch lacks count as all null).
        salt: what else the digest stands for (a fingerprint, a format).
        """
        self._columns = list(columns)
        self._head = json.dumps([salt, self._columns]).encode()
        self._sum = 0

    def update(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Adds the rows of a batch with a ``key`` column and (some of) the columns."""
        import pyarrow as pa

        for name in self._columns:
            if name not in batch.column_names:
                batch = batch.append_column(name, pa.nulls(batch.num_rows, pa.string()))
        for part in batch.to_batches(_INSERT_BATCH) if isinstance(batch, pa.Table) else [batch]:
            self.update_encoded(part.column("key"), _encoded_text(part, self._columns))

    def update_encoded(self, keys: pa.Array, encoded: pa.Array) -> None:
        """Adds rows given as their keys and their :func:`_encoded_text` of the columns."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not len(keys):
            return
        texts = pc.binary_join_element_wise(json_strings(keys), encoded.cast(pa.string()), "").cast(pa.binary())
        sha256 = hashlib.sha256
        self._sum += sum(int.from_bytes(sha256(text).digest(), "little") for text in texts.to_pylist())

    def hexdigest(self) -> str:
        """The digest of every row added so far."""
        return hashlib.sha256(self._head + (self._sum % (1 << 256)).to_bytes(32, "little")).hexdigest()


def _store_digest(varying: list[str], meta: dict[str, Any]) -> RowsDigest:
    """The digest of what a store holds besides its version: its columns, constants and (fed in) rows."""
    salt = json.dumps([FORMAT, varying, meta["constants"], meta["output_column"], meta["output_kind"]], sort_keys=True)
    return RowsDigest(varying, salt=salt)


def write_store(table: str, version: str) -> str:
    """Builds a version's store from its Parquet shards into the version directory; returns its path.

    The job calls this before it publishes; ``bulkinfer export store`` calls it for
    versions published before stores existed. Local and remote tables alike; a local
    version whose rows are those of the version it follows gets that version's store
    carried forward (:func:`carry_store`), checked a row group at a time: such a rerun
    never holds its rows in memory at once.

    Raises:
        TableError: the version is incomplete or has no prediction shards.
    """
    from bulkinfer.lookup.union import merges_languages, read_lookup_rows

    vdir = layout.version_dir(table, version)
    manifest = layout.read_manifest(vdir)
    target = fs.join(vdir, STORE)
    if "://" not in target:
        previous = manifest.get("previous_version")
        before = fs.join(layout.version_dir(table, previous), STORE) if previous else None
        before = before if before and os.path.exists(before) else None
        if before is not None and not merges_languages(manifest):  # the shards' rows are the store's rows
            rows = sum(layout.parquet_schema(path)[1] for path in layout.shard_paths(vdir, layout.PREDICTIONS))
            if carry_store(target, before, layout.iter_shard_batches(vdir, layout.PREDICTIONS), rows, version, manifest):
                return target
            before = None  # checked just now: not these rows
        build_store(target, read_lookup_rows(vdir, manifest), version, manifest, previous=before)
        return target
    rows = read_lookup_rows(vdir, manifest)
    with tempfile.TemporaryDirectory(prefix="bulkinfer-store-") as tmp:
        local = Path(tmp) / STORE
        build_store(local, rows, version, manifest)
        partial = fs.join(vdir, f".{STORE}.{uuid.uuid4().hex}.tmp")
        with local.open("rb") as src, fs.create(partial) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        fs.rename(partial, target)
    return target


def open_store(table: str, version: str, manifest: dict[str, Any], cache_dir: str | os.PathLike[str] | None = None) -> Store:
    """Opens a local store of a version; builds or downloads it once if needed.

    Order: the version's own ``store.sqlite`` when the table is local; else a store
    in the cache (``$BULKINFER_CACHE/stores/`` or ``~/.cache/bulkinfer/stores/``)
    built from this very manifest; else the version's ``store.sqlite`` downloaded
    into the cache (remote tables); else a store built from the Parquet shards into
    the cache. A store whose metadata does not match the version and manifest is
    passed over, never read.

    Args:
        table: the table directory (local, ``gs://``, ``s3://``).
        version: the version name.
        manifest: the version's manifest.
        cache_dir: where built and downloaded stores go (default: see above).

    Raises:
        TableError: the version has no prediction shards to build from.
    """
    digest = manifest_digest(manifest)
    own = fs.join(layout.version_dir(table, version), STORE)
    if "://" not in own and os.path.exists(own):
        store = _open_matching(own, version, digest)
        if store is not None:
            return store
    cached = _cache_path(table, version, digest, cache_dir)
    if cached.exists():
        store = _open_matching(cached, version, digest)
        if store is not None:
            return store
    if fs.is_remote(own) and fs.exists(own):
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.name}.{uuid.uuid4().hex}.tmp")
        try:
            with fs.open_read(own) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
            os.replace(partial, cached)
        finally:
            partial.unlink(missing_ok=True)
        store = _open_matching(cached, version, digest)
        if store is not None:
            return store
    from bulkinfer.lookup.union import read_lookup_rows

    _LOG.info("building the lookup store of %s version %s into %s (once)", table, version, cached)
    build_store(cached, read_lookup_rows(layout.version_dir(table, version), manifest), version, manifest)
    return Store(cached)


class Store:
    """A read-only store file; safe to share between threads (one SQLite connection per thread).

    Keys passed in must already be normalised; :class:`bulkinfer.lookup.table.PredictionTable`
    does that and is what callers normally use.
    """

    def __init__(self, path: str | os.PathLike[str]):
        """Opens the file and reads its metadata.

        Raises:
            TableError: the file is not a store of a known format.
        """
        self.path = Path(path)
        """The local file."""
        # immutable=1: the file never changes after its rename, so SQLite takes no
        # locks and checks nothing between reads.
        self._uri = f"file:{quote(str(self.path.resolve()))}?mode=ro&immutable=1"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            meta = {name: json.loads(value) for name, value in self._connection().execute("SELECT name, value FROM meta")}
        except sqlite3.DatabaseError as e:
            self.close()
            raise TableError(f"{self.path} is not a bulkinfer store: {e}") from e
        if meta.get("format") != FORMAT:
            self.close()
            raise TableError(f"{self.path} is a store of format {meta.get('format')}, this bulkinfer reads format {FORMAT}")
        self.meta: dict[str, Any] = meta
        """The store's metadata: version, manifest digest, rows, columns, constants, output column."""
        self.columns: tuple[str, ...] = tuple(meta["columns"])
        """Names of the values in each row's JSON array, in order."""
        self.constants: dict[str, Any] = dict(meta["constants"])
        """Columns with one value for every row of the version."""

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread=False only so that close() may close it from another thread.
            db = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            db.execute("PRAGMA query_only = ON")
            # Reads through a memory map skip a read() call and a copy per page: lookups
            # took half the time (p50 4.5 against 7.2 µs, 1M rows). Safe because the file
            # never changes in place.
            db.execute(f"PRAGMA mmap_size = {self.path.stat().st_size + (1 << 20)}")
            with self._lock:
                self._connections.append(db)
            self._local.db = db
        return db

    def __len__(self) -> int:
        return int(self.meta["rows"])

    def check_integrity(self) -> None:
        """Reads every page of the file and checks its structure (SQLite's ``quick_check``).

        Raises:
            TableError: the file is damaged (overwritten or truncated in place).
        """
        try:
            problems = [row[0] for row in self._connection().execute("PRAGMA quick_check(5)")]
            counted = self._connection().execute("SELECT count(*) FROM rows").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise TableError(f"{self.path} is damaged: {e}") from e
        if problems != ["ok"]:
            raise TableError(f"{self.path} is damaged: {'; '.join(problems)}")
        if counted != len(self):
            raise TableError(f"{self.path} is damaged: it holds {counted} rows, its metadata says {len(self)}")

    def get(self, key: str) -> bytes | None:
        """The encoded values of a key (a JSON array, see :attr:`columns`), or None."""
        found = self._connection().execute("SELECT v FROM rows WHERE k = ?", (key,)).fetchone()
        return found[0] if found else None

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The encoded values of those keys that are present, in one statement."""
        wanted = list(keys)
        db = self._connection()
        found: dict[str, bytes] = {}
        for start in range(0, len(wanted), _BATCH_KEYS):
            chunk = wanted[start : start + _BATCH_KEYS]
            found.update(db.execute(f"SELECT k, v FROM rows WHERE k IN ({','.join('?' * len(chunk))})", chunk).fetchall())
        return found

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every (key, encoded values) pair, in key order."""
        yield from self._connection().execute("SELECT k, v FROM rows ORDER BY k")

    def close(self) -> None:
        """Closes every connection; later reads fail."""
        with self._lock:
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()


def _encoded_text(batch: pa.RecordBatch, columns: list[str]) -> pa.Array:
    """Each row's values of ``columns`` as the JSON array ``orjson.dumps`` writes (the same bytes), a binary
    array built by column in Arrow: strings, integers, booleans and lists of strings; columns of other types
    are dumped value by value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not columns:
        return pa.array([b"[]"] * batch.num_rows, pa.binary())
    literals = [_json_column(batch.column(name)) for name in columns]
    return pc.binary_join_element_wise("[", *_interleave(literals, ","), "]", "").cast(pa.binary())


def _interleave(values: list[Any], separator: str) -> list[Any]:
    out: list[Any] = []
    for i, value in enumerate(values):
        out += [separator, value] if i else [value]
    return out


def _json_column(column: pa.Array) -> pa.Array:
    """orjson's JSON text of each value of a column (``null`` for nulls), as a string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return json_strings(column)
    if pa.types.is_integer(kind):
        return pc.fill_null(pc.cast(column, pa.string()), "null")
    if pa.types.is_boolean(kind):
        return pc.fill_null(pc.if_else(column, "true", "false"), "null")
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_string(kind.value_type):
        lists = column.cast(pa.list_(pa.string()))
        items = pa.ListArray.from_arrays(
            pc.subtract(lists.offsets, lists.offsets[0]), json_strings(lists.flatten()), mask=pc.is_null(lists)
        )
        return pc.fill_null(pc.binary_join_element_wise("[", pc.binary_join(items, ","), "]", ""), "null")
    return pa.array([orjson.dumps(value).decode() for value in column.to_pylist()], pa.string())


def json_strings(values: pa.Array, dump: Callable[[str], str] | None = None) -> pa.Array:
    """JSON of each string as text (``null`` for nulls): a string with nothing to escape (no quote,
    backslash or control character; found with numpy over the buffer) is quoted in Arrow, the others
    are dumped one by one, by ``dump`` (default: ``orjson.dumps``; ``json.dumps(..., ensure_ascii=False)``
    escapes the same characters)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    dump = dump or (lambda value: orjson.dumps(value).decode())
    values = values.cast(pa.string())
    escape = strings_holding(values, lambda data: (data < 0x20) | (data == 0x22) | (data == 0x5C))
    quoted = pc.binary_join_element_wise('"', values, '"', "")
    if escape.any():
        dumped = pa.array([dump(v) for v in values.filter(pa.array(escape)).to_pylist()], pa.string())
        quoted = pc.if_else(pa.array(escape), dumped.take(pa.array(np.where(escape, np.cumsum(escape) - 1, 0))), quoted)
    return pc.fill_null(quoted, "null")


def _constant(column: pa.ChunkedArray) -> bool:
    """Whether a column holds one non-null scalar value in every row (lists never count)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(column) == 0 or column.null_count or pa.types.is_nested(column.type):
        return False
    return bool(pc.all(pc.equal(column, column[0])).as_py())


def _open_matching(path: str | os.PathLike[str], version: str, digest: str) -> Store | None:
    try:
        store = Store(path)
    except TableError as e:
        _LOG.warning("passing over %s: %s", path, e)
        return None
    if store.meta.get("version") == version and store.meta.get("manifest_digest") == digest:
        # A damaged file would fail lookups at random (500s) long after opening: check it whole once, now.
        try:
            store.check_integrity()
        except TableError as e:
            _LOG.error("passing over %s: %s; building a store from the Parquet shards instead", path, e)
            store.close()
            return None
        return store
    _LOG.warning("passing over %s: built from another manifest of version %s", path, version)
    store.close()
    return None


def _cache_path(table: str, version: str, digest: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is None:
        cache_dir = layout.local_cache_dir() / "stores"
    location = table if "://" in table else os.path.abspath(table)
    table_id = hashlib.sha256(location.encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / table_id / f"{version}-{digest[:16]}.sqlite"
