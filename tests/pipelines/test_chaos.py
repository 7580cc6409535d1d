"""Chaos: `bulkinfer run` killed with SIGKILL at random moments, rerun each time, while a reader keeps looking keys up.

Each round starts the job the way a scheduler does (the CLI, its own process; the
fake handler stands in for the engine, with a small delay per batch so that the
kill moments spread over start-up, generation, checkpointing, writing, the store
build and the publish), kills it after a random delay, checks the table, reruns the
same command to completion and checks again. The kill moments are drawn in strata
over the length of one measured run, so every phase is hit; the seed is printed.

After every kill and every rerun: ``CURRENT`` names a whole version (its files read
and match its manifest), every valid key of that version's corpus is in it exactly
once, and its rows add up. Throughout: a reader thread opening the table and
looking keys up never fails.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.compute as pc

from bulkinfer.format import layout
from bulkinfer.lookup.table import open_table
from bulkinfer.pipelines.cache_job import run
from tests.conftest import write_corpus
from tests.fakes import FakeHandler

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 10
BASE = [f"query {n}" for n in range(240)]
BAD = [None, "", "   "]

CLI_WITH_SLOW_FAKE_ENGINE = """
import functools, sys, time
from bulkinfer import cli
from bulkinfer.pipelines import cache_job
from tests.fakes import FakeHandler

class SlowFakeHandler(FakeHandler):
    def run_inference(self, batch, model, inference_args=None):
        time.sleep(0.01)
        return super().run_inference(batch, model, inference_args)

cache_job.run = functools.partial(cache_job.run, model_handler=SlowFakeHandler())
sys.exit(cli.main(sys.argv[1:]))
"""


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
                    found = table.get("query 7")
                    if found is None or not found["synonyms"]:
                        self.failures.append(f"{table.version}: query 7 not found")
                self.lookups += 1
            except Exception as e:  # any failure of a reader is what this test is about
                self.failures.append(f"{type(e).__name__}: {e}")
            time.sleep(0.05)


def _corpus(tmp_path: Path, round_: int) -> tuple[Path, set[str]]:
    extra = [f"round {round_} key {n}" for n in range(60)]
    queries = BASE + extra + BAD + ["Query 1", "  query   2 "]  # repeated spellings of keys already there
    return write_corpus(tmp_path / f"corpus-{round_}.parquet", queries), set(BASE) | set(extra)


def _job_argv(corpus: Path, table: Path, run_id: str) -> list[str]:
    return [
        "--task",
        "synonyms",
        "--input",
        str(corpus),
        "--output",
        str(table),
        "--model",
        "fake",
        "--run_id",
        run_id,
        "--checkpoint_rows",
        "16",
    ]


def _command(corpus: Path, table: Path, run_id: str) -> list[str]:
    return [sys.executable, "-c", CLI_WITH_SLOW_FAKE_ENGINE, "run", *_job_argv(corpus, table, run_id)]


def _check_table(table: Path, corpora: dict[str, set[str]]) -> str:
    """The published version is whole: files read and match the manifest, each valid key once, rows add up."""
    version = layout.read_current(str(table))
    assert version is not None
    manifest = layout.verify_version(str(table), version, deep=True)
    rows = layout.read_shards(layout.version_dir(str(table), version), layout.PREDICTIONS, ["key"])
    keys = rows.column("key").to_pylist()
    assert len(keys) == len(set(keys)), f"{version}: a key is there twice"
    assert set(keys) == corpora[version], f"{version}: keys missing or foreign"
    counts = manifest["counts"]
    assert counts["rows_in"] == counts["rows_in_table"] + counts["rows_dead"] + counts["rows_not_sampled"]
    assert (
        int(pc.sum(layout.read_shards(layout.version_dir(str(table), version), layout.PREDICTIONS, ["source_rows"]).column(0)).as_py())
        == counts["rows_in_table"]
    )
    return version


def test_kill_9_at_random_moments_never_breaks_the_table_or_its_readers(tmp_path):
    seed = int(os.environ.get("BULKINFER_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed} (BULKINFER_CHAOS_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    table = tmp_path / "table"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BULKINFER_CACHE": str(tmp_path / "cache")}
    corpora: dict[str, set[str]] = {}

    corpus, keys = _corpus(tmp_path, 0)
    corpora["r0"] = keys
    started = time.monotonic()
    first = subprocess.run(_command(corpus, table, "r0"), env=env, capture_output=True, text=True, timeout=300)
    one_run = time.monotonic() - started
    assert first.returncode == 0, first.stderr[-3000:]
    _check_table(table, corpora)

    reader = Reader(table)
    reader.start()
    killed_at = []
    try:
        for round_ in range(1, ROUNDS + 1):
            corpus, keys = _corpus(tmp_path, round_)
            run_id = f"r{round_}"
            corpora[run_id] = keys
            # Stratified: round k is killed somewhere in the k-th tenth of a run, so every phase gets its kill.
            delay = one_run * (round_ - 1 + rng.random()) / ROUNDS
            job = subprocess.Popen(_command(corpus, table, run_id), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            job.send_signal(signal.SIGKILL)
            job.wait(timeout=60)
            killed_at.append((round(delay, 2), job.returncode))
            before = _check_table(table, corpora)
            assert before in (f"r{round_ - 1}", run_id), f"after a kill, CURRENT is {before}"

            # The rerun runs in this process: the same job, without paying the interpreter's start-up ten more times.
            rerun = run(_job_argv(corpus, table, run_id), model_handler=FakeHandler())
            assert rerun["version"] == run_id
            assert _check_table(table, corpora) == run_id
            assert not (table / "checkpoints").exists() and not (table / "LOCK").exists()
    finally:
        reader.stop.set()
        reader.join(timeout=30)
    print(f"one run {one_run:.1f} s; kills at (s, exit): {killed_at}; {reader.lookups} lookups")
    assert any(code == -signal.SIGKILL for _, code in killed_at), "no run was killed: the test proves nothing"
    assert reader.lookups > 0 and reader.failures == [], reader.failures[:5]
