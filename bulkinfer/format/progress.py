"""Live progress of a run: one small counter file per worker process, summed by whoever watches.

Beam's metrics are only readable once the pipeline has finished (on the in-process
DirectRunner ``pipeline.run()`` returns at the end), and worker processes of
``--direct_running_mode multi_processing`` share nothing with the main process. So
every process that runs a counting step keeps its counts in memory and rewrites
``<directory>/<host>-<pid>.json`` (temporary file + rename, so a reader never sees
half a file) at most every :data:`FLUSH_SECONDS` and at the end of every bundle;
:func:`read_progress` sums the files. Nothing here imports Beam.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COUNTS = ("rows_read", "keys", "reused", "to_generate", "generated", "dead_lettered", "prompt_tokens", "output_tokens")
"""The counters, in the order the progress line shows them."""

FLUSH_SECONDS = 0.5
"""Longest time a process keeps counts unwritten while elements flow."""

PROGRESS_NAME = "progress.json"
"""The run's progress figures (counts, token histograms, engine time, rates, timeline) in the version directory."""

TIMELINE_NAME = "timeline.jsonl"
"""Samples of the summed counts over the run, appended by the progress display (not a counter file: not ``*.json``)."""

TOKEN_BUCKETS = (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
"""Upper bounds of the token-length histogram buckets (a last bucket holds longer ones)."""


def bucket_of(tokens: int) -> int:
    """Index of the histogram bucket that holds a length of ``tokens``."""
    for i, bound in enumerate(TOKEN_BUCKETS):
        if tokens <= bound:
            return i
    return len(TOKEN_BUCKETS)


@dataclass
class Snapshot:
    """Counts summed over every process of a run at one moment."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    """Each of :data:`COUNTS`."""
    prompt_token_hist: list[int] = field(default_factory=lambda: [0] * (len(TOKEN_BUCKETS) + 1))
    """Prompts per prompt-length bucket (:data:`TOKEN_BUCKETS`)."""
    output_token_hist: list[int] = field(default_factory=lambda: [0] * (len(TOKEN_BUCKETS) + 1))
    """Generations per output-length bucket."""
    processes: int = 0
    """Counter files read."""
    engine_from: float | None = None
    """When the first key was sent towards the engine (Unix time), or None."""
    engine_to: float | None = None
    """When the last generation came back (Unix time), or None."""

    @property
    def engine_seconds(self) -> float:
        """Seconds from the first key sent towards the engine to the last generation: the engine's share of the run."""
        if self.engine_from is None or self.engine_to is None:
            return 0.0
        return max(0.0, self.engine_to - self.engine_from)

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data."""
        return {
            "counts": dict(self.counts),
            "prompt_token_hist": list(self.prompt_token_hist),
            "output_token_hist": list(self.output_token_hist),
            "token_buckets": list(TOKEN_BUCKETS),
            "processes": self.processes,
            "engine_from": self.engine_from,
            "engine_to": self.engine_to,
            "engine_seconds": round(self.engine_seconds, 3),
        }


class _ProcessCounts:
    """This process's counts for one progress directory; shared by every counting step in the process."""

    def __init__(self, directory: str):
        self._path = Path(directory) / f"{socket.gethostname()}-{os.getpid()}.json"
        self._lock = threading.Lock()  # multi_threading mode: bundles of one process run in several threads
        self._snapshot = Snapshot(processes=1)
        self._dirty = False
        self._flushed = 0.0

    def add(self, name: str, n: int = 1, prompt_tokens: int | None = None, output_tokens: int | None = None) -> None:
        with self._lock:
            self._snapshot.counts[name] += n
            snapshot = self._snapshot
            if name == "to_generate" and snapshot.engine_from is None:
                snapshot.engine_from = time.time()
            elif name == "generated":
                snapshot.engine_to = time.time()
            if prompt_tokens is not None:
                self._snapshot.counts["prompt_tokens"] += prompt_tokens
                self._snapshot.prompt_token_hist[bucket_of(prompt_tokens)] += 1
            if output_tokens is not None:
                self._snapshot.counts["output_tokens"] += output_tokens
                self._snapshot.output_token_hist[bucket_of(output_tokens)] += 1
            self._dirty = True
        if time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self.flush()

    def add_generations(self, name: str, prompt_tokens: Sequence[int], output_tokens: Sequence[int], failed: int = 0) -> None:
        """Counts a batch of generations at once: :meth:`add` for each, plus ``failed`` ones without tokens."""
        import numpy as np

        bins = np.asarray(TOKEN_BUCKETS)
        with self._lock:
            snapshot = self._snapshot
            snapshot.counts[name] += len(prompt_tokens) + failed
            if name == "generated":
                snapshot.engine_to = time.time()
            for column, counted, hist in (
                ("prompt_tokens", prompt_tokens, snapshot.prompt_token_hist),
                ("output_tokens", output_tokens, snapshot.output_token_hist),
            ):
                if not len(counted):
                    continue
                snapshot.counts[column] += int(np.sum(counted))
                # bucket_of for every length: the first bound at or above it.
                for i, n in enumerate(np.bincount(np.searchsorted(bins, counted, side="left"), minlength=len(hist))):
                    hist[i] += int(n)
            self._dirty = True
        if time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            data = json.dumps(self._snapshot.to_dict())
            self._dirty = False
            self._flushed = time.monotonic()
            # The pid in the name keeps writers apart; the thread id keeps this process's threads apart.
            temporary = self._path.with_name(f".{self._path.name}.{threading.get_ident()}.tmp")
            try:
                temporary.write_text(data, encoding="utf-8")
                os.replace(temporary, self._path)
            except OSError:
                # Progress is for watching: a full disk, or the directory removed after the run by a
                # worker's late flush, must not fail the run (nor recreate the directory).
                pass


_COUNTERS: dict[str, _ProcessCounts] = {}
_COUNTERS_LOCK = threading.Lock()


def process_counts(directory: str) -> _ProcessCounts:
    """This process's counter for ``directory`` (one per process and directory, created on first use)."""
    with _COUNTERS_LOCK:
        counter = _COUNTERS.get(directory)
        if counter is None:
            counter = _COUNTERS[directory] = _ProcessCounts(directory)
        return counter


def read_progress(directory: str) -> Snapshot:
    """Sums the counter files of every process of a run; files being replaced are skipped until next time."""
    total = Snapshot()
    # Subdirectories too: a run of several tables counts each into its own.
    for path in sorted(Path(directory).rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a process is replacing it right now
        for name in COUNTS:
            total.counts[name] += int(data["counts"].get(name, 0))
        for hist in ("prompt_token_hist", "output_token_hist"):
            summed = getattr(total, hist)
            for i, n in enumerate(data.get(hist, [])[: len(summed)]):
                summed[i] += int(n)
        total.processes += 1
        if data.get("engine_from") is not None:
            total.engine_from = min(filter(None, (total.engine_from, data["engine_from"])))
        if data.get("engine_to") is not None:
            total.engine_to = max(filter(None, (total.engine_to, data["engine_to"])))
    return total
