"""One run at a time per table: a lock file that a crashed run does not leave stuck."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from bulkinfer.errors import ConfigError
from bulkinfer.format import fs, layout

LOCK = "LOCK"


class TableLock:
    """Held for the whole run: ``with TableLock(table, run_id): ...``.

    The lock is a ``LOCK`` file in the table directory naming the run, host and
    process. While held, a heartbeat thread refreshes it every ``heartbeat_s``.
    Another run takes the lock over only when the holder is gone: a process on
    this host that no longer exists, or a heartbeat older than ``stale_after_s``
    (a crashed run elsewhere). On local disks the file is created atomically
    (``O_EXCL``); on object stores the check is best effort.
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

    def __enter__(self) -> TableLock:
        holder = self._holder()
        if holder is not None and not self._is_stale(holder):
            raise ConfigError(
                f"{self._table} is locked by run {holder.get('run_id')} (host {holder.get('host')}, pid {holder.get('pid')}, "
                f"last heartbeat {int(time.time() - holder.get('heartbeat', 0))} s ago); one run at a time per table. "
                f"If that run is dead, the lock expires {int(self._stale_after_s)} s after its last heartbeat"
            )
        if holder is not None:
            fs.delete([self._path])
        self._write(exclusive=True)
        self._thread = threading.Thread(target=self._beat, name="bulkinfer-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self._holder()
        if holder is not None and holder.get("run_id") == self._run_id and holder.get("pid") == os.getpid():
            fs.delete([self._path])

    def _record(self) -> dict[str, Any]:
        return {"run_id": self._run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}

    def _write(self, exclusive: bool) -> None:
        text = json.dumps(self._record())
        if "://" in self._path:
            layout.write_text(self._path, text)
            return
        path = Path(self._path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if exclusive:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError as e:
                raise ConfigError(f"{self._table} was locked by another run a moment ago; one run at a time per table") from e
            with os.fdopen(fd, "w") as f:
                f.write(text)
        else:
            tmp = path.with_name(f".{LOCK}.{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            self._write(exclusive=False)

    def _holder(self) -> dict[str, Any] | None:
        if not fs.exists(self._path):
            return None
        try:
            return json.loads(layout.read_text(self._path))
        except (ValueError, OSError):
            return {}  # half-written by a process that died mid-write: no heartbeat, so stale

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
