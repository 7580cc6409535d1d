"""Operational failures on the command line: one line on the terminal, the traceback in a log file.

A scheduler reads the exit code and an operator reads one line; the traceback a
developer needs goes to ``$BULKINFER_CACHE/logs/`` (default ``~/.cache/bulkinfer/logs/``),
and the line says where.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bulkinfer.errors import EngineError, LockLostError
from bulkinfer.format.layout import local_cache_dir

EXIT_FAILED = 1
"""Exit code of an operational failure (disk, network, engine, Redis): nothing was published."""


def report_failure(error: BaseException, command: str) -> int:
    """Writes ``error``'s traceback to a log file, prints one line naming it and the file; returns :data:`EXIT_FAILED`.

    Args:
        error: the exception that stopped the command.
        command: the subcommand (``run``, ``export``, ...), part of the log file's name.
    """
    text = "".join(traceback.format_exception(error))
    log = _write_log(command, text)
    where = f"details in {log}" if log else "no log file could be written (the traceback follows)"
    print(f"bulkinfer: {command} failed: {summary(error)}; {where}", file=sys.stderr)
    if not log:
        print(text, file=sys.stderr)
    return EXIT_FAILED


def summary(error: BaseException) -> str:
    """One line about the error: the most telling one in its chain (Beam wraps a stage's error in its own)."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    telling = next((e for e in chain if isinstance(e, (EngineError, LockLostError))), None)
    telling = telling or next((e for e in reversed(chain) if isinstance(e, OSError)), None) or chain[-1]
    lines = [line.strip() for line in str(telling).splitlines() if line.strip()]
    message = lines[0] if lines else ""
    message = message if len(message) <= 400 else message[:400] + "..."
    return f"{type(telling).__name__}: {message}" if message else type(telling).__name__


class _WithoutTraceback(logging.Formatter):
    """Formats a record without its exception's traceback (that goes to the log file)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self._inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        plain = logging.makeLogRecord(record.__dict__)
        plain.exc_info, plain.exc_text, plain.stack_info = None, None, None
        return self._inner.format(plain)


def no_tracebacks_on_terminal() -> None:
    """Keeps tracebacks that libraries log (Beam logs a failed stage's) off the terminal; the message line stays.

    Call after the libraries are imported: some install their own handlers then.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
            if not isinstance(handler.formatter, _WithoutTraceback):
                handler.setFormatter(_WithoutTraceback(handler.formatter))


def _write_log(command: str, text: str) -> str | None:
    name = f"{command}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    for directory in (local_cache_dir() / "logs", Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / name
            path.write_text(text, encoding="utf-8")
            return str(path)
        except OSError:  # a full disk: try the next place
            continue
    return None
