"""Paths of tables, local or remote, without importing Beam for a local one.

Local paths (no ``scheme://``) are served with :mod:`os` and :mod:`glob`, with the
semantics of Beam's ``LocalFileSystem`` (``create`` makes the parent directories,
``delete`` removes a directory with its contents). Remote paths (``gs://``,
``s3://``, ...) go through Beam's ``FileSystems``, imported on first use only: a
live system that reads a local table never loads Beam, grpc or their start-up cost.
"""

from __future__ import annotations

import glob
import os
import shutil
from typing import IO, Any


def is_remote(path: str) -> bool:
    """Whether a path names an object store (``gs://``, ``s3://``, ...) rather than a local file."""
    return "://" in path


def _beam() -> Any:
    try:
        from apache_beam.io.filesystems import FileSystems
    except ImportError as e:  # the lookup side may be installed without the job's dependencies one day
        raise ImportError(f"remote tables are read through Apache Beam's filesystems: pip install 'apache-beam[gcp,aws]' ({e})") from e
    return FileSystems


def join(base: str, *parts: str) -> str:
    """``base/part/...`` in the path syntax of ``base``."""
    return _beam().join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def exists(path: str) -> bool:
    """Whether a file or directory exists."""
    return bool(_beam().exists(path)) if is_remote(path) else os.path.exists(path)


def open_read(path: str) -> IO[bytes]:
    """A binary stream of a file (seekable for local files and Beam's remote streams)."""
    if is_remote(path):
        from apache_beam.io.filesystem import CompressionTypes

        return _beam().open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return open(path, "rb")


def create(path: str) -> IO[bytes]:
    """A binary stream writing a new file (replacing one there); parent directories are made."""
    if is_remote(path):
        from apache_beam.io.filesystem import CompressionTypes

        return _beam().create(path, compression_type=CompressionTypes.UNCOMPRESSED)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return open(path, "wb")


def rename(source: str, destination: str) -> None:
    """Moves a file; over an existing destination, atomically for local files (a rename over it)."""
    if is_remote(source):
        _beam().rename([source], [destination])
    else:
        os.replace(source, destination)


def delete(paths: list[str]) -> None:
    """Deletes files, and directories with everything in them.

    Raises:
        FileNotFoundError: (local) a path does not exist; Beam's ``BeamIOError`` for remote ones.
    """
    remote = [path for path in paths if is_remote(path)]
    if remote:
        _beam().delete(remote)
    for path in paths:
        if is_remote(path):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def match(pattern: str) -> list[str]:
    """Files (not directories) matching a glob pattern (``*``, ``?``, ``[...]``), sorted."""
    if is_remote(pattern):
        return sorted(meta.path for meta in _beam().match([pattern])[0].metadata_list)
    return sorted(path for path in glob.glob(pattern) if os.path.isfile(path))
