"""What ``bulkinfer run`` shows on the terminal: a live progress display, and nothing of the engine's logs.

vLLM, torch and Beam write to the process's stdout and stderr from Python loggers,
from C (``libtcmalloc is not found``, NUMA binding) and from the engine's own
worker processes. Only a file-descriptor redirect catches all three:
:class:`QuietTerminal` points descriptors 1 and 2 at a log file (``run.log`` in the
version directory once the job knows it) and keeps duplicates of the real ones for
the run summary (stdout) and the progress display (stderr).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import IO, Any

# No Beam import here: the command line enters QuietTerminal before Beam's import-time warnings.
from bulkinfer.errors import ConfigError, GateError, InputError, TableError
from bulkinfer.format.progress import TIMELINE_NAME, Snapshot, read_progress

LOG_NAME = "run.log"
"""The run's log file, in the version directory."""


_ACTIVE: list[QuietTerminal] = []

# The real terminal's stdout and stderr, once a QuietTerminal has left the log on descriptors 1
# and 2 for the rest of the process (until_exit): a later one in the same process must find them here.
_TERMINAL: list[int] = []


class QuietTerminal:
    """Sends descriptors 1 and 2 (this process and every process it starts) to a log file while the job runs.

    ``terminal_out`` and ``terminal_err`` write to the real stdout and stderr. With
    ``verbose`` the log lines go to the real stderr instead, and stdout still carries
    only what is written to ``terminal_out``. On exit the descriptors and
    ``sys.stdout``/``sys.stderr`` are as they were, or with ``until_exit`` the
    descriptors stay on the log for the rest of the process (an engine's shutdown
    lines come at interpreter exit) and ``sys.stdout``/``sys.stderr`` write to the
    terminal from then on.
    """

    def __init__(self, verbose: bool = False, keep_log: bool = True, until_exit: bool = False):
        """Args:
        verbose: log lines to stderr instead of a file.
        keep_log: keep a log that never moved into a version directory; False deletes it when
            the block ends without an exception. A log is always kept (and its path said) after an
            unexpected exception, and deleted after a user error (bulkinfer.errors).
        until_exit: leave descriptors 1 and 2 on the log after the block (command-line use).
        """
        self.verbose = verbose
        self.keep_log = keep_log
        self.until_exit = until_exit
        self.log_path: str | None = None
        self.terminal_out: IO[str] = sys.stdout
        self.terminal_err: IO[str] = sys.stderr
        self._saved: tuple[int, int] | None = None
        self._temporary = False

    def __enter__(self) -> QuietTerminal:
        _flush_std()
        saved_out, saved_err = (os.dup(_TERMINAL[0]), os.dup(_TERMINAL[1])) if _TERMINAL else (os.dup(1), os.dup(2))
        self._saved = (saved_out, saved_err)
        self.terminal_out = _terminal(sys.stdout, 1, saved_out)
        self.terminal_err = _terminal(sys.stderr, 2, saved_err)
        if self.verbose:
            os.dup2(saved_err, 1)
        else:
            # Until the job knows its version directory: a local file that moves there (attach_log).
            fd, self.log_path = tempfile.mkstemp(prefix="bulkinfer-run-", suffix=".log")
            self._temporary = True
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        _ACTIVE.append(self)
        return self

    def attach(self, vdir: str) -> None:
        """Moves the log into the version directory ``vdir`` (local ones; remote ones keep the local file) and says where once."""
        if self.verbose or self._saved is None:
            return
        if "://" in vdir:
            self.say(f"log: {self.log_path}")
            return
        os.makedirs(vdir, exist_ok=True)
        path = os.path.join(vdir, LOG_NAME)
        _flush_std()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self._temporary and self.log_path is not None:
            # What was logged before the version directory existed (planning, model conversion) comes first.
            with open(self.log_path, "rb") as before, os.fdopen(os.dup(fd), "ab") as after:
                shutil.copyfileobj(before, after)
            os.unlink(self.log_path)
            self._temporary = False
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self.log_path = path
        self.say(f"log: {path}")

    def say(self, line: str) -> None:
        """Writes one line to the real stderr."""
        print(line, file=self.terminal_err, flush=True)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        _flush_std()
        _ACTIVE.remove(self)
        if self._saved is None:
            return
        if self.until_exit:
            if not _TERMINAL:
                _TERMINAL.extend(self._saved)
            else:
                os.close(self._saved[0])
                os.close(self._saved[1])
            sys.stdout, sys.stderr = self.terminal_out, self.terminal_err
        else:
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            os.close(self._saved[0])
            os.close(self._saved[1])
            for stream, original in ((self.terminal_out, sys.stdout), (self.terminal_err, sys.stderr)):
                if stream is not original:
                    stream.close()
        self._saved = None
        if self._temporary and self.log_path:
            user_error = isinstance(exc_type, type) and issubclass(exc_type, (ConfigError, InputError, TableError, GateError))
            if exc_type is not None and not user_error:
                # A run that failed before it had a version directory: keep its log, and say where.
                print(f"bulkinfer: log: {self.log_path}", file=sys.stderr)
            elif user_error or not self.keep_log:
                # A user error is one line on stderr; the lines logged before it help nobody.
                os.unlink(self.log_path)


def _terminal(stream: IO[str], fd: int, saved: int) -> IO[str]:
    """Where ``stream``'s writes really go: a copy of the saved descriptor when ``stream`` writes to
    ``fd``, else ``stream`` itself (a Python-level stream, such as a test's capture, bypasses descriptors)."""
    try:
        writes_to_fd = stream.fileno() == fd
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        writes_to_fd = False
    if not writes_to_fd:
        return stream
    return open(os.dup(saved), "w", buffering=1, encoding="utf-8")  # noqa: SIM115


def attach_log(vdir: str) -> None:
    """Moves the log of the running :class:`QuietTerminal`, if any, into the version directory ``vdir``."""
    if _ACTIVE:
        _ACTIVE[-1].attach(vdir)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


class ProgressDisplay:
    """Shows a run's progress on ``stream``: a live bar, or a plain line every ``interval`` seconds.

    A thread reads the run's counter files (:func:`bulkinfer.format.progress.read_progress`)
    twice a second and keeps a timeline of them for the run report.
    """

    def __init__(self, directory: str, stream: IO[str], mode: str = "auto", interval: float = 30.0, clock: Any = time.monotonic):
        """Args:
        directory: the run's progress directory.
        stream: where to draw (the real stderr).
        mode: ``bar``, ``lines``, ``off``, or ``auto`` (bar when ``stream`` is a terminal).
        interval: seconds between plain lines.
        clock: monotonic seconds (tests pass a fake one).
        """
        if interval <= 0:
            raise ConfigError(f"--progress_interval must be > 0 seconds, got {interval}")
        if mode == "auto":
            mode = "bar" if stream.isatty() else "lines"
        self.directory = directory
        self.stream = stream
        self.mode = mode
        self.interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._failed = False
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._first_generated: tuple[float, int, int] | None = None
        self.timeline: list[dict[str, Any]] = []
        """``{"t": seconds since start, **counts}`` twice a second while it runs."""

    def __enter__(self) -> ProgressDisplay:
        self._started = self._clock()
        if self.mode != "off":
            self._thread = threading.Thread(target=self._loop, name="bulkinfer-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # A run that failed shows its error alone: no last progress line under it.
        self._failed = exc_type is not None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def status(self, snapshot: Snapshot, now: float) -> dict[str, Any]:
        """The figures shown for ``snapshot`` at ``now``: counts, prompts/s, output tokens/s and ETA (seconds or None)."""
        counts = snapshot.counts
        generated = counts["generated"]
        if self._first_generated is None and generated:
            self._first_generated = (now, generated, counts["output_tokens"])
        rate = tokens_rate = 0.0
        eta = None
        if self._first_generated is not None:
            since, at_first, tokens_first = self._first_generated
            elapsed = now - since
            if elapsed > 0 and generated > at_first:
                rate = (generated - at_first) / elapsed
                tokens_rate = (counts["output_tokens"] - tokens_first) / elapsed
                eta = max(0, counts["to_generate"] - generated) / rate
        if not rate and generated and snapshot.engine_seconds > 0:
            # Everything came back in one engine call: the rate over the engine stage as a whole.
            rate = generated / snapshot.engine_seconds
            tokens_rate = counts["output_tokens"] / snapshot.engine_seconds
        return {**counts, "elapsed": now - self._started, "prompts_per_s": rate, "output_tokens_per_s": tokens_rate, "eta_s": eta}

    def line(self, status: dict[str, Any]) -> str:
        """One plain progress line, as written to logs."""
        eta = _duration(status["eta_s"]) if status["eta_s"] is not None else "-"
        return (
            f"bulkinfer: progress {_duration(status['elapsed'])}: rows read {status['rows_read']:,}, keys {status['keys']:,}, "
            f"reused {status['reused']:,}, to generate {status['to_generate']:,}, generated {status['generated']:,}, "
            f"dead-lettered {status['dead_lettered']:,}, {status['prompts_per_s']:.1f} prompts/s, "
            f"{status['output_tokens_per_s']:.0f} output tokens/s, ETA {eta}"
        )

    def _sample(self) -> dict[str, Any]:
        now = self._clock()
        status = self.status(read_progress(self.directory), now)
        sample = {"t": round(status["elapsed"], 2), **{k: status[k] for k in ("rows_read", "keys", "generated", "output_tokens")}}
        self.timeline.append(sample)
        # The run report plots throughput over the run from these samples.
        with open(os.path.join(self.directory, TIMELINE_NAME), "a", encoding="utf-8") as f:
            f.write(json.dumps(sample) + "\n")
        return status

    def _loop(self) -> None:
        if self.mode == "bar":
            self._bar()
            return
        last = self._clock()
        while not self._stop.wait(0.5):
            status = self._sample()
            if self._clock() - last >= self.interval:
                last = self._clock()
                print(self.line(status), file=self.stream, flush=True)
        status = self._sample()
        if not self._failed:
            print(self.line(status), file=self.stream, flush=True)

    def _bar(self) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.text import Text

        console = Console(file=self.stream)
        # Line 1: the engine's work and when it ends; line 2: where the rows went.
        bar = Progress(
            TextColumn("generated"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} · ETA {task.fields[eta]}"),
            console=console,
        )
        task = bar.add_task("generate", total=None, rate="", eta="-")
        # No redirect of sys.stdout/sys.stderr: loggers created during the run (vLLM's) would hold
        # rich's proxies and write to the terminal, even after the bar is gone.
        with Live(Group(bar, Text("")), console=console, refresh_per_second=4, redirect_stdout=False, redirect_stderr=False) as live:
            while True:
                stopping = self._stop.wait(0.5)
                status = self._sample()
                eta = _duration(status["eta_s"]) if status["eta_s"] is not None else "-"
                rate = f"{status['prompts_per_s']:.1f} prompts/s · {status['output_tokens_per_s']:.0f} output tokens/s"
                bar.update(task, completed=status["generated"], total=status["to_generate"] or None, rate=rate, eta=eta)
                figures = (
                    f"rows read {status['rows_read']:,} · keys {status['keys']:,} · reused {status['reused']:,} · "
                    f"to generate {status['to_generate']:,} · dead-lettered {status['dead_lettered']:,}"
                )
                live.update(Group(bar, Text(figures)))
                if stopping:
                    live.transient = self._failed  # erased on failure, kept as the run's last figures otherwise
                    break


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
