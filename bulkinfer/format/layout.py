"""The on-disk layout of a prediction table, shared by the job and every reader.

::

    OUTPUT/
      CURRENT                                 name of the published version (one line)
      versions/<version>/predictions-*.parquet
      versions/<version>/dead_letter-*.parquet
      versions/<version>/manifest.json

All paths go through :mod:`bulkinfer.format.fs`, so local paths, ``gs://`` and
``s3://`` work the same, and a reader of a local table never imports Beam (nor
pyarrow until it reads Parquet). ``CURRENT`` is replaced atomically (temporary file, then rename),
and only after the version it names is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bulkinfer.errors import TableError
from bulkinfer.format import fs

if TYPE_CHECKING:
    import pyarrow as pa

CURRENT = "CURRENT"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
PREDICTIONS = "predictions"
DEAD_LETTER = "dead_letter"
SPILL = ".spill"
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def local_cache_dir() -> Path:
    """Where bulkinfer keeps local files (converted models, lookup stores): ``$BULKINFER_CACHE`` or ``~/.cache/bulkinfer``."""
    return Path(os.environ.get("BULKINFER_CACHE", Path.home() / ".cache" / "bulkinfer"))


def valid_version(version: str) -> bool:
    """Whether a run id / version name is safe as a directory name."""
    return bool(_VERSION.match(version))


def check_version_name(version: str, what: str = "version") -> str:
    """Returns ``version`` if it is a valid version name.

    Raises:
        TableError: it is not (``../x``, a path, an empty string, ...): no path built
            from it may leave the table directory.
    """
    if not isinstance(version, str) or not valid_version(version):
        raise TableError(f"{what} {version!r} is not a version name (a letter or digit, then letters, digits, '.', '_', '-'; at most 128)")
    return version


def version_dir(table: str, version: str) -> str:
    """The directory of one version of a table.

    Raises:
        TableError: ``version`` is not a version name.
    """
    return fs.join(table, "versions", check_version_name(version))


def spill_dir(vdir: str) -> str:
    """Where a run's pipeline leaves the tables its shuffles carry by name (``bulkinfer.transforms.spill``): a
    directory in the version directory, deleted when the pipeline ends."""
    return fs.join(vdir, SPILL)


def checkpoint_dir(table: str, run_id: str) -> str:
    """Where a run checkpoints its generated results in chunks, until it publishes."""
    return fs.join(table, CHECKPOINTS, check_version_name(run_id, "run id"))


def read_text(path: str) -> str:
    """Reads a small text file, local or remote."""
    with fs.open_read(path) as f:
        return f.read().decode("utf-8")


def write_text(path: str, text: str) -> None:
    """Writes a small text file, local or remote."""
    with fs.create(path) as f:
        f.write(text.encode("utf-8"))


def read_current(table: str) -> str | None:
    """The published version of a table, or None if nothing is published yet.

    Raises:
        TableError: ``CURRENT`` does not hold a version name (binary or text
            garbage, a path such as ``../other/versions/v``); the message says how
            to repair it.
    """
    path = fs.join(table, CURRENT)
    if not fs.exists(path):
        return None
    try:
        name = read_text(path).strip()
    except UnicodeDecodeError as e:
        raise TableError(f"{path} is damaged: not text ({e}); {_REPAIR.format(table=table)}") from e
    if not valid_version(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise TableError(f"{path} is damaged: {shown!r} is not a version name; {_REPAIR.format(table=table)}")
    return name


_REPAIR = (
    "list the versions with `bulkinfer versions --table {table}` and publish one with `bulkinfer rollback --table {table} --to VERSION`"
)


def read_current_or_none(table: str) -> str | None:
    """Like :func:`read_current`, but a damaged ``CURRENT`` reads as None (for rollback and listing, which repair it)."""
    try:
        return read_current(table)
    except TableError:
        return None


def published_version(table: str) -> tuple[str, dict[str, Any]] | None:
    """The published version's name and manifest, both checked; None when nothing is published.

    Raises:
        TableError: ``CURRENT`` is damaged, or names a version that is missing or
            whose manifest does not read.
    """
    name = read_current(table)
    if name is None:
        return None
    return resolve_version(table, name)


def publish(table: str, version: str) -> None:
    """Makes ``version`` the published one: writes a temporary file, then renames it over CURRENT."""
    tmp = fs.join(table, f".{CURRENT}.{uuid.uuid4().hex}.tmp")
    try:
        write_text(tmp, version + "\n")
        fs.rename(tmp, fs.join(table, CURRENT))
    finally:
        # A full disk fails the write after the file was created: leave no temporary file behind.
        if fs.exists(tmp):
            fs.delete([tmp])


def write_manifest(vdir: str, manifest: dict[str, Any]) -> None:
    """Writes ``manifest.json`` of a version."""
    write_text(fs.join(vdir, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_manifest(vdir: str) -> dict[str, Any]:
    """Reads ``manifest.json`` of a version."""
    path = fs.join(vdir, MANIFEST)
    if not fs.exists(path):
        raise TableError(f"{vdir} has no {MANIFEST}; it is not a complete version")
    try:
        manifest = json.loads(read_text(path))
    except (ValueError, OSError) as e:  # JSON and UTF-8 errors are ValueErrors
        raise TableError(f"{path} does not read ({type(e).__name__}: {e}); the version is damaged") from e
    if not isinstance(manifest, dict):
        raise TableError(f"{path} holds no JSON object; the version is damaged")
    return manifest


def resolve_version(table: str, version: str | None = None) -> tuple[str, dict[str, Any]]:
    """The name and manifest of one complete version of a table, for readers.

    Args:
        table: the table directory.
        version: a version name; default: the published one (``CURRENT``).

    Returns:
        The version name and its manifest.

    Raises:
        TableError: no table there, nothing published and no version named, or no
            complete version of that name (the message lists the versions there are).
    """
    if version is not None:
        check_version_name(version)
    name = version or read_current(table)
    if name is None:
        if not fs.exists(table):
            raise TableError(f"{table} is not a table: no such directory")
        raise TableError(f"{table} has no published version (no {CURRENT} file); name one with --version")
    if not fs.exists(fs.join(version_dir(table, name), MANIFEST)):
        names = [found for found, _ in list_versions(table)] if fs.exists(table) else []
        where = f"versions: {', '.join(names)}" if names else "it has none (is this a table directory?)"
        raise TableError(f"{table} has no complete version {name!r}; {where}")
    return name, read_manifest(version_dir(table, name))


def shard_paths(vdir: str, kind: str) -> list[str]:
    """The Parquet shards of one kind (``predictions`` or ``dead_letter``) in a version, sorted."""
    return fs.match(fs.join(vdir, f"{kind}-*.parquet"))


def open_binary(path: str) -> Any:
    """A seekable binary stream of a file, for pyarrow."""
    return fs.open_read(path)


# Every Parquet read goes through the two functions below. Local files are read by
# path with Arrow's threads; remote files through a filesystem stream, single-
# threaded: pyarrow 25 reading a Python file object with threads aborts the
# interpreter at exit ("terminate called without an active exception"; 7 of 8 runs).


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """Reads one Parquet file, local or remote."""
    import pyarrow.parquet as pq

    if "://" not in path:
        return pq.read_table(path, columns=columns)
    with open_binary(path) as f:
        return pq.read_table(f, columns=columns, use_threads=False)


def parquet_schema(path: str) -> tuple[pa.Schema, int]:
    """The Arrow schema and row count of one Parquet file, from its footer."""
    with parquet_file(path) as parquet:
        return parquet.schema_arrow, parquet.metadata.num_rows


def read_shards(vdir: str, kind: str, columns: list[str] | None = None) -> pa.Table | None:
    """All shards of one kind in a version as one Arrow table, or None when there are none."""
    import pyarrow as pa

    parts = [read_parquet(path, columns) for path in shard_paths(vdir, kind)]
    return pa.concat_tables(parts) if parts else None


@contextlib.contextmanager
def parquet_file(path: str) -> Iterator[Any]:
    """A ``pyarrow.parquet.ParquetFile`` of a local or remote file, to read a row group at a time."""
    import pyarrow.parquet as pq

    if "://" not in path:
        yield pq.ParquetFile(path)
        return
    with open_binary(path) as stream:
        yield pq.ParquetFile(stream)


def iter_shard_batches(vdir: str, kind: str, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The rows of every shard of one kind in a version, a row group at a time: memory holds one row group, not the
    version. ``columns`` a shard lacks are left out of its batches."""
    for path in shard_paths(vdir, kind):
        with parquet_file(path) as parquet:
            present = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
            for group in range(parquet.num_row_groups):
                yield from parquet.read_row_group(group, columns=present, use_threads="://" not in path).to_batches()


def list_versions(table: str) -> list[tuple[str, dict[str, Any]]]:
    """Complete versions (those with a manifest), oldest first, with their manifests."""
    found = []
    for path in fs.match(fs.join(table, "versions", "*", MANIFEST)):
        vdir = path[: -len(MANIFEST) - 1]
        found.append((vdir.rstrip("/").rsplit("/", 1)[-1], json.loads(read_text(path))))
    return sorted(found, key=lambda item: (item[1].get("finished_at", ""), item[0]))


def prune_versions(table: str, keep: int) -> list[str]:
    """Deletes complete versions beyond the newest ``keep``, never the published one; returns their names."""
    current = read_current(table)
    versions = [name for name, _ in list_versions(table)]
    doomed = [name for name in versions[: max(0, len(versions) - keep)] if name != current]
    if doomed:
        fs.delete([version_dir(table, name) for name in doomed])
    return doomed


def rollback(table: str, to: str | None = None) -> str:
    """Points ``CURRENT`` back at an earlier version and returns its name.

    Args:
        table: the table directory.
        to: the version to publish; default: the newest version older than the
            published one whose quality gates passed.

    Raises:
        TableError: the version does not exist, is incomplete, or there is none to go back to.
    """
    # A damaged CURRENT is what a rollback repairs, so it does not stop one.
    current = read_current_or_none(table)
    versions = list_versions(table)
    names = [name for name, _ in versions]
    if to is not None:
        check_version_name(to)
        if to not in names:
            raise TableError(f"{table} has no complete version {to!r}; versions: {', '.join(names) or 'none'}")
        target = to
    else:
        older = versions[: names.index(current)] if current in names else versions
        passed = [name for name, manifest in older if manifest.get("gates", {}).get("passed", True)]
        if not passed:
            raise TableError(f"{table} has no version older than {current} that passed its gates; nothing to roll back to")
        target = passed[-1]
    verify_version(table, target, deep=True)
    publish(table, target)
    return target


def verify_version(table: str, version: str, *, deep: bool = False) -> dict[str, Any]:
    """Checks that a version's files read and that their rows match its manifest; returns the manifest.

    Args:
        table: the table directory.
        version: the version name.
        deep: read every shard whole (rollback); otherwise only their footers (publish,
            where the job has just read them whole).

    Raises:
        TableError: naming the file that does not read, or the count that does not match.
    """
    vdir = version_dir(table, version)
    manifest = read_manifest(vdir)
    found = {}
    for kind in (PREDICTIONS, DEAD_LETTER):
        rows = 0
        for path in shard_paths(vdir, kind):
            try:
                rows += read_parquet(path).num_rows if deep else parquet_schema(path)[1]
            except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ...: all mean a damaged file
                raise TableError(f"version {version} is damaged: {path} does not read ({type(e).__name__}: {e})") from e
        found[kind] = rows
    counts = manifest.get("counts") or {}
    expected = {PREDICTIONS: counts.get("keys"), DEAD_LETTER: counts.get("dead_letter_records")}
    for kind, want in expected.items():
        if want is not None and want != found[kind]:
            raise TableError(f"version {version} is damaged: its {kind} shards hold {found[kind]} rows, its manifest says {want} ({vdir})")
    return manifest
