"""One run at a time per table: a lock file that a crashed run does not leave stuck."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from bulkinfer.errors import ConfigError, LockLostError
from bulkinfer.format import fs, layout

_LOG = logging.getLogger(__name__)

LOCK = "LOCK"


class TableLock:
    """Held for the whole run: ``with TableLock(table, run_id): ...``.

    The lock is a ``LOCK`` file in the table directory naming the run, host and
    process. While held, a heartbeat thread refreshes it every ``heartbeat_s``.
    Another run takes the lock over only when the holder is gone: a process on
    this host that no longer exists, or a heartbeat older than ``stale_after_s``
    (a crashed run elsewhere). A lock file that cannot be read is never taken over.

    On local disks, checking the holder and taking the lock over happen under an
    ``flock`` of the table directory (released by the kernel when a process dies), so
    of two runs that find the same stale lock exactly one wins; the file appears
    whole or not at all (written aside, then hard-linked into place). On object
    stores the check is best effort.

    A heartbeat that fails stops beating and fails the run: :meth:`check` (called
    before publishing) and leaving the ``with`` block raise :class:`LockLostError`.
    """

    def __init__(self, table: str, run_id: str, *, heartbeat_s: float = 30.0, stale_after_s: float = 600.0):
        """Args:
        table: the table directory.
        run_id: the run taking the lock.
        heartbeat_s: seconds between heartbeats.
        stale_after_s: a lock without a heartbeat for this long is taken over.
        """
        self._path = fs.join(table, LOCK)
        self._table = table
        self._run_id = run_id
        self._heartbeat_s = heartbeat_s
        self._stale_after_s = stale_after_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: str | None = None

    def __enter__(self) -> TableLock:
        with self._guard():
            holder = self._holder()
            if holder is not None and not self._is_stale(holder):
                raise ConfigError(
                    f"{self._table} is locked by run {holder.get('run_id')} (host {holder.get('host')}, pid {holder.get('pid')}, "
                    f"last heartbeat {int(time.time() - float(holder.get('heartbeat', 0)))} s ago); one run at a time per table. "
                    f"If that run is dead, the lock expires {int(self._stale_after_s)} s after its last heartbeat"
                )
            if holder is not None:
                _LOG.warning("taking over the stale lock of run %s (pid %s) on %s", holder.get("run_id"), holder.get("pid"), self._table)
                fs.delete([self._path])
            self._write(exclusive=True)
        self._thread = threading.Thread(target=self._beat, name="bulkinfer-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self._holder_or_none()
        if holder is not None and self._is_mine(holder):
            fs.delete([self._path])
        if exc_type is None and self._failure is not None:
            raise LockLostError(self._failure)

    def check(self) -> None:
        """Raises unless this run still holds the lock with a working heartbeat (call before publishing).

        Raises:
            LockLostError: the heartbeat failed, or the lock file names another run.
        """
        if self._failure is None:
            holder = self._holder_or_none()
            if holder is None or not self._is_mine(holder):
                self._failure = f"run {self._run_id} lost the lock of {self._table}: {self._path} now names {holder}; not publishing"
        if self._failure is not None:
            raise LockLostError(self._failure)

    def _is_mine(self, holder: dict[str, Any]) -> bool:
        return holder.get("run_id") == self._run_id and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Serialises lock checks and takeovers of one local table between processes."""
        if fs.is_remote(self._path):
            yield
            return
        import fcntl

        os.makedirs(self._table, exist_ok=True)
        fd = os.open(self._table, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _record(self) -> dict[str, Any]:
        return {"run_id": self._run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}

    def _write(self, exclusive: bool) -> None:
        text = json.dumps(self._record())
        if "://" in self._path:
            layout.write_text(self._path, text)
            return
        path = Path(self._path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside first: a full disk fails there, and never leaves an empty LOCK behind.
        tmp = path.with_name(f".{LOCK}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(text)
            if exclusive:
                try:
                    os.link(tmp, path)  # fails if the file exists: an exclusive create of a whole file
                except FileExistsError as e:
                    raise ConfigError(f"{self._table} was locked by another run a moment ago; one run at a time per table") from e
            else:
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            try:
                holder = self._holder()
                if holder is None or not self._is_mine(holder):
                    # Taken over (this run looked dead for too long): never overwrite the new holder's lock.
                    self._failure = f"run {self._run_id} lost the lock of {self._table} to {holder}; not publishing"
                    _LOG.error("%s", self._failure)
                    return
                self._write(exclusive=False)
            except Exception as e:  # any failure: without a heartbeat another run may take the table over
                self._failure = f"the heartbeat of the lock {self._path} failed ({type(e).__name__}: {e}); not publishing"
                _LOG.error("%s", self._failure)
                return

    def _holder(self) -> dict[str, Any] | None:
        """The lock's holder record; None without a lock file; ``{}`` for an unreadable record (stale).

        Raises:
            ConfigError: the lock file exists but cannot be read (a read error is no proof that its run is gone).
        """
        if not fs.exists(self._path):
            return None
        try:
            text = layout.read_text(self._path)
        except FileNotFoundError:
            return None  # released between the two calls
        except OSError as e:
            raise ConfigError(f"cannot read the lock file {self._path} ({e}); not taking the table over, try again") from e
        try:
            holder = json.loads(text)
        except ValueError:
            return {}  # not a record (written by hand, or damaged): no heartbeat, so stale
        return holder if isinstance(holder, dict) else {}

    def _holder_or_none(self) -> dict[str, Any] | None:
        try:
            return self._holder()
        except ConfigError:
            return None

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        if time.time() - float(holder.get("heartbeat", 0)) > self._stale_after_s:
            return True
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False
