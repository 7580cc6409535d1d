"""Chaos: `bulkinfer run` on the tiny real model killed with SIGKILL at random moments, rerun each time, while a reader looks keys up.

A first version is published by the job in this process (the session's shared engine,
whose start counts in the engine-loading phase whether this run or an earlier test started it),
watched: the moments at which its files appear mark off its phases, and give each
phase's measured length. Then a job is started the way a scheduler starts it (the CLI,
its own process, its own vLLM engine) and killed with ``kill -9`` (its process group);
the rerun of the killed job is the next round's run (the same command), killed in turn;
a last rerun runs to completion. Ten kills over such jobs, each aimed at one phase
(start-up, with the engine loading; generation, with its checkpoint writes; the version
write; the manifest and report; the store and match-index build; the publish): a round
waits for the phase to begin in its run, then kills at a random point of the phase's
measured length (two kills in one phase split it in halves). The phase a kill actually
hit is read from the files the run had written by then, and printed with the seed.

After every kill: ``CURRENT`` names a whole version (its files read and match its
manifest), every valid key of that version's corpus is in it exactly once, and its
rows add up. Throughout: a reader thread opening the table and looking keys up never
fails.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from bulkinfer.format import layout
from bulkinfer.lookup.table import open_table
from bulkinfer.pipelines.cache_job import run
from tests.conftest import ungated_task, write_corpus

pytestmark = pytest.mark.engine

FIRST = [f"query {n}" for n in range(40)]
NEW = [f"new query {n}" for n in range(40)]  # as many keys to generate as in the first run
BAD = [None, "", "   "]
REPEATS = ["Query 1", "  query   2 "]  # other spellings of keys already there

# The phases of a run, each named with the file whose appearance ends it (None: the process exits).
PHASES = (
    ("start-up: imports and planning", "lock"),
    ("start-up: pipeline and engine loading", "checkpoint"),
    ("generation and checkpoint writes", "shard"),
    ("version write", "manifest"),
    ("manifest and report", "report"),
    ("store and match-index build", "current"),
    ("publish and cleanup", None),
)
# Jobs killed over and over (the rerun of a killed run is the next round's run), each then rerun
# to completion in this process. Each round aims at one phase, by index into PHASES, in the order
# a chain of reruns reaches them. v1 has keys to generate: its kills are those of the start-up (the
# engine loads only while keys are left to generate) and the generation. The later jobs (v2, ...)
# have the same keys, all reused: their runs start no engine, which makes the kills after the
# generation cheap; where a kill lands after the publish, the next round starts the next job.
# The measured run, in this process, has no interpreter start-up: the start-up kill uses the length
# the first round measured.
FIRST_JOB = (1, 0, 2)
LATER_JOBS = (3, 4, 5, 3, 4, 5, 6)
TARGETS = FIRST_JOB + LATER_JOBS


class Watcher(threading.Thread):
    """Records when each milestone of one run of ``version`` first shows in ``table`` (seconds since start).

    Only files this run made count: a killed run leaves its files behind until the rerun clears them.
    """

    def __init__(self, table: Path, version: str, pid: int | None = None):
        super().__init__(daemon=True)
        self.table, self.version, self.pid = table, version, pid
        self.started = time.monotonic()
        self.before = {str(p): self._identity(p) for p in table.rglob("*")} if table.exists() else {}
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    @staticmethod
    def _identity(path: Path) -> tuple[int, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def _new(self, path: Path) -> bool:
        identity = self._identity(path)
        return identity is not None and self.before.get(str(path)) != identity

    def milestones(self) -> set[str]:
        found = set()
        lock = self.table / "LOCK"
        try:
            if self._new(lock) and (self.pid is None or f'"pid": {self.pid}' in lock.read_text()):
                found.add("lock")
        except OSError:  # LOCK is being replaced
            pass
        checkpoints = self.table / "checkpoints" / self.version
        if checkpoints.exists() and any(self._new(p) for p in checkpoints.iterdir()):
            found.add("checkpoint")
        vdir = self.table / "versions" / self.version
        if vdir.exists():
            shards = [*vdir.glob("predictions-*"), *vdir.glob(".staging/predictions-*")]
            if any(self._new(p) for p in shards):
                found.add("shard")
            found |= {m for m, name in (("manifest", "manifest.json"), ("report", "report.html")) if self._new(vdir / name)}
        current = self.table / layout.CURRENT
        if self._new(current) and layout.read_current_or_none(str(self.table)) == self.version:
            found.add("current")
        return found

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                now = self.milestones()
            except OSError:  # a directory removed while listed: look again
                continue
            for m in now - set(self.seen):
                self.seen[m] = time.monotonic() - self.started
            time.sleep(0.003)

    def wait_for(self, milestone: str | None, job: subprocess.Popen) -> bool:
        """Waits until ``milestone`` shows (None: now); False if the job exits first."""
        while milestone is not None and milestone not in self.seen:
            if job.poll() is not None:
                return False
            time.sleep(0.003)
        return True

    def sleep_within(self, phase: int, seconds: float, job: subprocess.Popen) -> None:
        """Sleeps ``seconds``, or less where phase ``phase`` ends sooner in this run (a busy machine runs slower or faster)."""
        until, end = time.monotonic() + seconds, PHASES[phase][1]
        while time.monotonic() < until and (end is None or end not in self.seen) and job.poll() is None:
            time.sleep(0.003)

    def phase(self) -> str:
        """The phase the run is in: the one after the last milestone it reached."""
        reached = [i for i, (_, end) in enumerate(PHASES) if end in self.seen]
        return PHASES[max(reached) + 1 if reached else 0][0]


def durations(seen: dict[str, float], total: float) -> dict[int, float]:
    """Each phase's length from its milestones (the phase before the first milestone starts at 0)."""
    ends = [seen.get(end, total) if end else total for _, end in PHASES]
    return {i: max(0.0, ends[i] - (ends[i - 1] if i else 0.0)) for i in range(len(PHASES))}


class Reader(threading.Thread):
    """Opens the published table and looks a key up, over and over; records every failure."""

    def __init__(self, table: Path):
        super().__init__(daemon=True)
        self.table, self.lookups, self.failures = str(table), 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with open_table(self.table, cache_dir=Path(self.table).parent / "reader-cache") as table:
                    found = table.get("QUERY 7")
                    if found is None or found["key"] != "query 7" or not found["raw_output"]:
                        self.failures.append(f"{table.version}: query 7 not found: {found}")
                self.lookups += 1
            except Exception as e:  # any failure of a reader is what this test is about
                self.failures.append(f"{type(e).__name__}: {e}")
            time.sleep(0.05)


def _check_table(table: Path, corpora: dict[str, set[str]]) -> str:
    """The published version is whole: files read and match the manifest, each valid key once, rows add up."""
    version = layout.read_current(str(table))
    assert version is not None
    manifest = layout.verify_version(str(table), version, deep=True)
    rows = layout.read_shards(layout.version_dir(str(table), version), layout.PREDICTIONS, ["key", "source_rows"])
    keys = rows.column("key").to_pylist()
    assert len(keys) == len(set(keys)), f"{version}: a key is there twice"
    assert set(keys) == corpora[version], f"{version}: keys missing or foreign"
    counts = manifest["counts"]
    assert counts["rows_in"] == counts["rows_in_table"] + counts["rows_dead"] + counts["rows_not_sampled"]
    assert int(pc.sum(rows.column("source_rows")).as_py()) == counts["rows_in_table"]
    return version


def test_kill_9_at_random_moments_never_breaks_the_table_or_its_readers(tiny_model, shared_engines, tmp_path):
    seed = int(os.environ.get("BULKINFER_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed} (BULKINFER_CHAOS_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    table = tmp_path / "table"
    # The tiny random-weight model answers noise, which the task's quality gates rightly refuse:
    # without them (ungated_task), what is tested is that no kill breaks the table, not the answers.
    task = ungated_task(tmp_path)

    # Small engine batches and checkpoint chunks: the generation writes a checkpoint every few keys.
    def argv(corpus: Path, run_id: str) -> list[str]:
        return ["--task", task, "--input", str(corpus), "--output", str(table), "--model", str(tiny_model),
                "--max_model_len", "512", "--run_id", run_id, "--batch_size", "4", "--checkpoint_rows", "4"]  # fmt: skip

    # The measured run: the first version, published by the job in this process on the shared engine.
    corpora = {"v0": set(FIRST)}
    first = write_corpus(tmp_path / "v0.parquet", FIRST + BAD + REPEATS)
    watcher = Watcher(table, "v0")
    pooled = set(shared_engines)
    watcher.start()
    run(argv(first, "v0"))
    watcher.stop.set()
    measured = durations(watcher.seen, time.monotonic() - watcher.started)
    if set(shared_engines) == pooled:
        # The run reused an engine an earlier test started (the same arguments as the other job tests'): the
        # engine-loading phase of a job that starts its own is this run's plus that engine's measured start.
        (reused,) = shared_engines.started_with(model=str(tiny_model), max_model_len=512, enable_lora=None)
        measured[1] += shared_engines.start_seconds[reused]
    _check_table(table, corpora)

    # The killed jobs: the first corpus again (reused) plus new keys to generate.
    corpus = write_corpus(tmp_path / "v1.parquet", FIRST + NEW + BAD + REPEATS)
    reader = Reader(table)
    reader.start()
    kills, per_phase = [], {i: 0 for i in range(len(PHASES))}
    started = time.monotonic()

    def finish(version: str) -> None:
        # The last rerun of a job runs to completion (in this process: the same job, on the shared engine if it must generate).
        run(argv(corpus, version))
        assert _check_table(table, corpora) == version
        assert not (table / "checkpoints").exists() and not (table / "LOCK").exists()

    version, later = "v1", iter(f"v{n}" for n in range(2, 2 + len(LATER_JOBS)))
    try:
        for round_, target in enumerate(TARGETS):
            if round_ >= len(FIRST_JOB) and (version == "v1" or layout.read_current_or_none(str(table)) == version):
                finish(version)
                version = next(later)
            corpora[version] = set(FIRST) | set(NEW)
            command = [sys.executable, "-m", "bulkinfer.cli", "run", *argv(corpus, version)]
            # Two kills aimed at one phase fall in different halves of it.
            stratum = per_phase[target] = per_phase[target] + 1
            share = (stratum - 1 + rng.random()) / TARGETS.count(target)
            # Its own process group, killed whole, as a scheduler kills a job (its cgroup or container): killing
            # only the main process would leave the engine's processes (vLLM's EngineCore and worker) running.
            job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            watch = Watcher(table, version, job.pid)
            watch.start()
            moment = None
            if watch.wait_for(PHASES[target - 1][1] if target else None, job):
                watch.sleep_within(target, measured[target] * share, job)
                os.killpg(job.pid, signal.SIGKILL)
                moment = round(time.monotonic() - watch.started, 2)
            job.wait(timeout=600)
            with contextlib.suppress(ProcessLookupError):  # a run that ended by itself: stop what it may have left
                os.killpg(job.pid, signal.SIGKILL)
            time.sleep(0.05)  # the watcher's last look
            watch.stop.set()
            if not kills:
                measured[0] = watch.seen.get("lock", measured[0])
                print(f"measured phases (s): { {PHASES[i][0]: round(d, 2) for i, d in measured.items()} }")
            kills.append((PHASES[target][0], watch.phase(), moment, job.returncode))
            verdict = "killed" if job.returncode == -signal.SIGKILL else f"exit {job.returncode}"
            print(f"  {version} aimed at {kills[-1][0]!r}: {verdict} at {moment} s in {kills[-1][1]!r}")
            assert _check_table(table, corpora) in corpora
        finish(version)
    finally:
        reader.stop.set()
        reader.join(timeout=30)
    print(f"{len(kills)} rounds in {time.monotonic() - started:.0f} s, {reader.lookups} lookups")
    killed = [hit for _, hit, _, code in kills if code == -signal.SIGKILL]
    assert len(killed) >= 10, f"only {len(killed)} runs were killed: {kills}"
    assert reader.lookups > 0 and reader.failures == [], reader.failures[:5]
