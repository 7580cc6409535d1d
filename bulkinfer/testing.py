"""Helpers for tests and benchmarks that need real local services (like ``apache_beam.testing``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(workdir: str | Path, start_timeout_s: float = 10.0) -> Iterator[str]:
    """Runs a real ``redis-server`` on a free loopback port, without persistence.

    Yields its URL once it answers ``PING``; stops it on exit.

    Raises:
        FileNotFoundError: ``redis-server`` is not installed (``make install`` installs it).
        RuntimeError: it did not start in time.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (make install installs it: apt-get install redis-server)")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port} (exit {server.poll()})")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


@dataclass(frozen=True)
class WorkerPool:
    """A running Beam SDK worker pool (:func:`beam_worker_pool`)."""

    address: str
    """``localhost:PORT``: what ``--environment_config`` names."""
    pid: int
    """The pool's process id, also its process group's: its workers are in the group."""
    log: Path
    """Where the pool and its workers print."""

    def workers(self) -> list[int]:
        """The live processes the pool started (workers and their engine processes), the pool itself left out."""
        return [pid for pid in group_members(self.pid) if pid != self.pid]


@contextmanager
def beam_worker_pool(
    workdir: str | Path, env: dict[str, str] | None = None, start_timeout_s: float = 60.0, stop_timeout_s: float = 20.0
) -> Iterator[WorkerPool]:
    """Runs Beam's SDK worker pool (``python -m apache_beam.runners.worker.worker_pool_main``) on a free port.

    This is what Flink, Spark and Kubernetes deployments run beside each task manager
    for Python SDK workers: jobs reach it with ``--environment_type EXTERNAL
    --environment_config localhost:PORT``, and it starts one worker process per
    worker the runner asks for. It starts them with the ``python`` found on its
    PATH, so this interpreter's ``bin`` goes first there: the workers run in this
    environment, with Beam and bulkinfer installed.

    Yields the pool once it accepts connections. On exit, stops the pool
    with its whole process group (the workers it started and their engine processes).

    Args:
        workdir: the pool's (and so its workers') working directory; its ``pool.log``
            holds what they print.
        env: extra environment variables for the pool and its workers.
        start_timeout_s: how long to wait for the pool to listen.
        stop_timeout_s: how long to wait for it to stop before killing it.

    Raises:
        RuntimeError: the pool exited or did not listen in time (with the end of its log).
    """
    port = free_port()
    log = Path(workdir) / "pool.log"
    environment = {**os.environ, **(env or {})}
    environment["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), environment.get("PATH", "")])
    command = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"]
    with log.open("wb") as out:
        # A session of its own: the pool's workers and their engine processes are stopped with it.
        pool = subprocess.Popen(
            command,
            cwd=workdir,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                pass
            if pool.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {pool.returncode}" if pool.poll() is not None else f"did not listen within {start_timeout_s:.0f} s"
                tail = log.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"the Beam SDK worker pool ({' '.join(command)}) {why} on port {port}; its log {log} ends:\n{tail}")
            time.sleep(0.1)
        yield WorkerPool(f"localhost:{port}", pool.pid, log)
    finally:
        _stop_group(pool, stop_timeout_s)


def _die_with_parent() -> None:
    """In the child before it runs: SIGTERM when the process that started it dies, even by a kill that skips its cleanup."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop_group(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM to a process group, SIGKILL to what is left of it after ``timeout_s``."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()  # reaps the pool itself; its workers are reparented and reaped by init
        if not group_members(process.pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group, from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Fields after the parenthesised command name: state, ppid, pgrp, ...
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members
