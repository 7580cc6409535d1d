"""The table lock: one winner when two runs find the same stale lock, no takeover on a read error, a failed heartbeat fails the run."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bulkinfer.errors import ConfigError, LockLostError
from bulkinfer.format.lock import LOCK, TableLock


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _stale_lock(table: Path) -> None:
    """What ``kill -9`` leaves: a lock naming a process of this host that no longer exists."""
    table.mkdir(parents=True, exist_ok=True)
    record = {"run_id": "killed", "host": socket.gethostname(), "pid": _dead_pid(), "heartbeat": time.time()}
    (table / LOCK).write_text(json.dumps(record))


def _locker(table: str, run_id: str, start: float, tried: Any, results: multiprocessing.Queue) -> None:
    while time.time() < start:
        pass  # both processes leave this loop within microseconds of each other
    try:
        with TableLock(table, run_id, heartbeat_s=60):
            results.put((run_id, "won"))
            tried.wait(timeout=60)  # hold the lock until the other has tried, however late it started
    except ConfigError:
        results.put((run_id, "refused"))
        tried.wait(timeout=60)
    except BaseException as e:  # anything else is the bug this test is about
        results.put((run_id, f"crashed: {type(e).__name__}: {e}"))
        tried.wait(timeout=60)


def test_two_runs_taking_over_one_stale_lock_give_exactly_one_winner(tmp_path):
    context = multiprocessing.get_context("fork")
    for trial in range(25):
        table = tmp_path / f"table{trial}"
        _stale_lock(table)
        results, tried = context.Queue(), context.Barrier(2)
        start = time.time() + 0.2
        procs = [context.Process(target=_locker, args=(str(table), name, start, tried, results)) for name in ("a", "b")]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=30)
        outcomes = sorted(results.get(timeout=5)[1] for _ in procs)
        assert outcomes == ["refused", "won"], f"trial {trial}: {outcomes}"
        assert not (table / LOCK).exists()
        assert not list(table.glob(f".{LOCK}*")), "a temporary lock file was left behind"


def test_a_lock_that_cannot_be_read_is_not_taken_over(tmp_path):
    table = tmp_path / "table"
    (table / LOCK).mkdir(parents=True)  # reading it fails with an OSError, as a flaky mount might
    with pytest.raises(ConfigError, match="cannot read the lock file .* not taking the table over"):
        with TableLock(str(table), "r1"):
            pass
    assert (table / LOCK).is_dir()


def test_a_live_lock_is_refused_and_a_stale_one_taken_over(tmp_path):
    table = tmp_path / "table"
    with TableLock(str(table), "r1"):
        with pytest.raises(ConfigError, match="locked by run r1"):
            with TableLock(str(table), "r2"):
                pass
    _stale_lock(table)
    with TableLock(str(table), "r3"):
        assert json.loads((table / LOCK).read_text())["run_id"] == "r3"
    assert not (table / LOCK).exists()


def test_a_failed_heartbeat_fails_the_run(tmp_path):
    table = tmp_path / "table"
    with pytest.raises(LockLostError, match="heartbeat of the lock .* failed"):
        with TableLock(str(table), "r1", heartbeat_s=0.05) as lock:
            # The lock file turns unreadable under the running job (a directory now): every heartbeat fails.
            os.remove(table / LOCK)
            (table / LOCK).mkdir()
            time.sleep(0.3)
            with pytest.raises(LockLostError):
                lock.check()


def test_a_run_whose_lock_was_taken_over_does_not_publish(tmp_path):
    table = tmp_path / "table"
    with pytest.raises(LockLostError, match="lost the lock"):
        with TableLock(str(table), "r1", heartbeat_s=60) as lock:
            other = {"run_id": "r2", "host": socket.gethostname(), "pid": os.getpid() + 1, "heartbeat": time.time()}
            (table / LOCK).write_text(json.dumps(other))
            lock.check()
    assert json.loads((table / LOCK).read_text())["run_id"] == "r2", "the other run's lock was removed"
