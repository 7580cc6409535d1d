"""What the cache job does after its pipeline, step by step: seconds and peak RSS per step for N rows.

    python bench/publish_steps.py --rows 1000000
    python bench/publish_steps.py --rows 1000000 --steps quality,match_index --dir /tmp/publish-bench

Writes (once; reused when ``--dir`` already holds them) a synonyms table of two
versions of N distinct keys each, with every prediction column the job writes
(answers as the pipeline bench's stand-in engine gives them: three items made from the
key; the newer version changes a tenth of them, so churn has something to find) and a
dead-letter shard, plus a fanned-out table (``--concepts`` keys x ``--languages``
target languages). Then each step runs in a fresh process, so its peak RSS is its own:

- ``account``: the manifest's row accounting (:func:`bulkinfer.format.manifest.account_rows`);
- ``quality``: :func:`bulkinfer.format.quality.measure` with churn against the older version;
- ``languages``: the manifest's keys by language;
- ``match_summary``: the manifest's ``match`` section;
- ``report``: ``report.html`` (:func:`bulkinfer.tools.report.render_report`);
- ``store``: ``store.sqlite`` (:func:`bulkinfer.lookup.store.write_store`);
- ``match_index``: the match index (:func:`bulkinfer.lookup.match.write_match_index`), from the claims
  the ``match_summary`` step kept where it ran first and the tree keeps them, else from the shards;
- ``verify``: the check before ``CURRENT`` moves (:func:`bulkinfer.format.layout.verify_version`);
- ``after_pipeline``: all of the above in one process, the way a publish runs them;
- ``union``: :func:`bulkinfer.lookup.union.union_languages` over the fanned-out table;
- ``fanned_store``: the fanned-out table's ``store.sqlite`` (reads, unions, writes).

Prints one JSON object: per step, wall seconds, CPU seconds, peak RSS and RSS before
the step (after its inputs were read, where the step takes them read), in GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STEPS = ("account", "quality", "languages", "match_summary", "report", "store", "match_index", "verify", "after_pipeline")
FANNED_STEPS = ("union", "fanned_store")
_WORDS = ["cheap", "flights", "covid", "vaccine", "used", "cars", "near", "me", "best", "hotel", "rome", "berlin"]
_LANGUAGES = ["en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "pl", "cs", "fi"]


def _status_gb(field: str) -> float:
    """A memory figure of this process from ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in GB.

    ``VmHWM`` rather than ``ru_maxrss``: the latter of a child can carry its parent's RSS at fork.
    """
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024**2
    return 0.0


def _task(name: str) -> Any:
    from bulkinfer.tasks.spec import load_task

    return load_task(name)


def _fanned_task(languages: int) -> Any:
    import dataclasses

    return dataclasses.replace(_task("synonyms_worldwide"), target_languages=tuple(_LANGUAGES[:languages]))


def _write_version(table: Path, version: str, task: Any, keys: list[str], languages: list[str | None], changed: int, shards: int) -> None:
    """One version as the job writes it: prediction shards with every column, a dead-letter shard, a manifest."""
    from dataclasses import asdict

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from bulkinfer.format import layout
    from bulkinfer.format.records import DEAD_LETTER_SCHEMA, prediction_schema

    vdir = table / "versions" / version
    vdir.mkdir(parents=True)
    n = len(keys)
    key = pa.array(keys, pa.string())
    language = pa.array(languages, pa.string())
    # The stand-in engine's answer, with the language in it for fanned-out rows; `changed` rows say something else.
    stem = pc.if_else(pa.array(np.arange(n) < changed), pc.binary_join_element_wise(key, "new", " "), key)
    tagged = pc.if_else(pc.is_null(language), stem, pc.binary_join_element_wise(stem, pc.fill_null(language, ""), " "))
    items = [pc.binary_join_element_wise(tagged, word, " ") for word in ("one", "two", "three")]
    raw = pc.binary_join_element_wise(" ", items[0], ", ", items[1], ", ", items[2], "")
    offsets = pa.array(np.arange(0, 3 * n + 1, 3), pa.int32())
    flat = pa.concat_arrays([pa.array(np.stack([a.to_numpy(zero_copy_only=False) for a in items], axis=1).ravel(), pa.string())])
    provenance = {
        "model": "stand-in",
        "model_digest": "d" * 16,
        "task": task.name,
        "task_fingerprint": task.fingerprint(),
        "fingerprint": "f" * 16,
        "engine": "stand-in",
        "adapter": "",
        "adapter_digest": "",
        "run_id": version,
    }
    rows = pa.table(
        {
            "key": key,
            "query": key,
            "language": language,
            task.output_column: pa.ListArray.from_arrays(offsets, flat),
            "raw_output": raw,
            "source_rows": pa.array(np.ones(n, np.int64)),
            "prompt_tokens": pa.array(np.full(n, 120, np.int32)),
            "output_tokens": pa.array(np.full(n, 9, np.int32)),
            "finish_reason": pa.array(np.where(np.arange(n) % 97 == 0, "length", "stop")),
            **{name: pa.array([value] * n, pa.string()) for name, value in provenance.items()},
        },
        schema=prediction_schema(task),
    )
    for i, part in enumerate(np.array_split(np.arange(n), shards)):
        pq.write_table(rows.take(pa.array(part)), vdir / f"{layout.PREDICTIONS}-{i:05d}-of-{shards:05d}.parquet")
    dead = pa.table(
        {
            "reason": ["empty_query", "unparseable_output"],
            "message": ["the query is empty", "no items"],
            "stage": ["normalize_keys", "parse_predictions"],
            "key": [None, "some other key"],
            "query": ["", "some other key"],
            "language": [None, None],
            "row": ["{}", "{}"],
            "raw_output": [None, ""],
            "source_rows": [1, 1],
            **{name: [value, value] for name, value in provenance.items()},
        }
    ).cast(DEAD_LETTER_SCHEMA)
    pq.write_table(dead, vdir / f"{layout.DEAD_LETTER}-00000-of-00001.parquet")
    targets = len(task.target_languages) or 1
    manifest = {
        "format": 1,
        "version": version,
        **provenance,
        "output_kind": task.output,
        "output_column": task.output_column,
        "task_spec": asdict(task),
        "previous_version": "v1" if version == "v2" else None,
        "counts": {"rows_in": n // targets + 2, "keys": n, "dead_letter_records": 2, "generated": n, "reused": 0},
        "quality": {},
        "gates": {"passed": True, "failed": [], "thresholds": asdict(task.gates)},
        "languages": {"keys_by_language": {}},
        "finished_at": f"2026-01-0{version[-1]}T00:00:00Z",
    }
    layout.write_manifest(str(vdir), manifest)


def prepare(root: Path, rows: int, concepts: int, languages: int) -> None:
    """Writes the two tables under ``root`` unless a finished run of this function left them there."""
    import random

    from bulkinfer.format import layout

    done = root / "prepared.json"
    wanted = {"rows": rows, "concepts": concepts, "languages": languages}
    if done.exists() and json.loads(done.read_text()) == wanted:
        return
    rng = random.Random(15)
    keys = [f"{_WORDS[i % 12]} {_WORDS[(i // 12) % 12]} q{i}" for i in range(rows)]
    rng.shuffle(keys)  # the job's shards are in no key order
    task = _task("synonyms")
    table = root / "table"
    for version, changed in (("v1", 0), ("v2", rows // 10)):
        _write_version(table, version, task, keys, [None] * rows, changed, shards=max(1, rows // 100_000))
    layout.publish(str(table), "v1")
    fanned = _fanned_task(languages)
    codes = list(fanned.target_languages)
    concept_keys = keys[:concepts]
    pairs = [(k, code) for k in concept_keys for code in codes]
    rng.shuffle(pairs)
    _write_version(root / "fanned", "v1", fanned, [k for k, _ in pairs], [c for _, c in pairs], 0, shards=max(1, len(pairs) // 100_000))
    done.write_text(json.dumps(wanted))


def run_step(root: Path, step: str) -> dict[str, Any]:
    """Runs one step on the prepared tables in this process; its figures."""
    from bulkinfer.format import layout

    table, fanned = str(root / "table"), str(root / "fanned")
    task = _task("synonyms")
    vdir = layout.version_dir(table, "v2")
    prepared: dict[str, Any] = {}
    if step in ("quality", "languages", "match_summary"):
        from bulkinfer.format.manifest import account_rows

        account = account_rows(vdir, task.output_column, "v2", _rows_in(vdir), 0)
        prepared = {"rows": account.rows, "dead": account.dead_records}
        if step == "quality":
            prepared["before"] = layout.read_shards(layout.version_dir(table, "v1"), layout.PREDICTIONS, ["key", task.output_column])
    if step == "languages":
        import bulkinfer.pipelines.summary  # noqa: F401  (Beam's import is the job's, not this step's)
    if step == "union":
        prepared["rows"] = layout.read_shards(layout.version_dir(fanned, "v1"), layout.PREDICTIONS)
    rss_before = _status_gb("VmRSS")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    result = _STEP_FUNCTIONS[step](table, fanned, task, vdir, prepared)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "step": step,
        "seconds": round(seconds, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime - cpu_before, 2),
        "peak_rss_gb": round(_status_gb("VmHWM"), 2),
        "rss_before_gb": round(rss_before, 2),
        "result": result,
    }


def _rows_in(vdir: str) -> int:
    from bulkinfer.format import layout

    return int(layout.read_manifest(vdir)["counts"]["rows_in"])


def _account(table: str, fanned: str, task: Any, vdir: str, prepared: dict[str, Any]) -> Any:
    from bulkinfer.format.manifest import account_rows

    return account_rows(vdir, task.output_column, "v2", _rows_in(vdir), 0).keys


def _quality(table: str, fanned: str, task: Any, vdir: str, prepared: dict[str, Any]) -> Any:
    from bulkinfer.format.quality import measure

    return measure(task, prepared["rows"], prepared["dead"], prepared["before"])


def _languages(table: str, fanned: str, task: Any, vdir: str, prepared: dict[str, Any]) -> Any:
    from bulkinfer.pipelines.summary import keys_by_language

    return keys_by_language(prepared["rows"])


def _keep_claims(vdir: str) -> dict[str, Any]:
    """``keep_in`` as the job passes it (a tree without it collects the claims again at publish)."""
    import inspect

    from bulkinfer.lookup.match import match_summary

    return {"keep_in": vdir} if "keep_in" in inspect.signature(match_summary).parameters else {}


def _match_summary(table: str, fanned: str, task: Any, vdir: str, prepared: dict[str, Any]) -> Any:
    from bulkinfer.lookup.match import match_summary

    # Kept claims, where the tree keeps them, are what the match_index step (run after this one) builds from.
    return match_summary(prepared["rows"], task.output_column, **_keep_claims(vdir))


def _report(table: str, fanned: str, task: Any, vdir: str, prepared: dict[str, Any]) -> Any:
    from bulkinfer.tools.report import render_report

    return len(render_report(table, "v2"))


def _store(table: str, fanned: str, task: Any, vdir: str, prepared: dict[str, Any]) -> Any:
    from bulkinfer.lookup.store import write_store

    return os.path.getsize(write_store(table, "v2"))


def _match_index(table: str, fanned: str, task: Any, vdir: str, prepared: dict[str, Any]) -> Any:
    from bulkinfer.lookup.match import write_match_index

    summary = write_match_index(table, "v2")
    return summary.items if summary else None


def _verify(table: str, fanned: str, task: Any, vdir: str, prepared: dict[str, Any]) -> Any:
    from bulkinfer.format import layout

    return layout.verify_version(table, "v2")["counts"]["keys"]


def _after_pipeline(table: str, fanned: str, task: Any, vdir: str, prepared: dict[str, Any]) -> Any:
    from bulkinfer.format import layout
    from bulkinfer.format.manifest import account_rows
    from bulkinfer.format.quality import measure
    from bulkinfer.lookup.match import match_summary, write_match_index
    from bulkinfer.lookup.store import write_store
    from bulkinfer.pipelines.summary import keys_by_language
    from bulkinfer.tools.report import render_report

    account = account_rows(vdir, task.output_column, "v2", _rows_in(vdir), 0)
    before = layout.read_shards(layout.version_dir(table, "v1"), layout.PREDICTIONS, ["key", task.output_column])
    measure(task, account.rows, account.dead_records, before)
    keys_by_language(account.rows)
    match_summary(account.rows, task.output_column, **_keep_claims(vdir))
    render_report(table, "v2")
    write_store(table, "v2")
    write_match_index(table, "v2")
    return layout.verify_version(table, "v2")["counts"]["keys"]


def _union(table: str, fanned: str, task: Any, vdir: str, prepared: dict[str, Any]) -> Any:
    from bulkinfer.format import layout
    from bulkinfer.lookup.union import one_row_per_key

    return one_row_per_key(prepared["rows"], layout.read_manifest(layout.version_dir(fanned, "v1"))).num_rows


def _fanned_store(table: str, fanned: str, task: Any, vdir: str, prepared: dict[str, Any]) -> Any:
    from bulkinfer.lookup.store import write_store

    return os.path.getsize(write_store(fanned, "v1"))


_STEP_FUNCTIONS = {
    "account": _account,
    "quality": _quality,
    "languages": _languages,
    "match_summary": _match_summary,
    "report": _report,
    "store": _store,
    "match_index": _match_index,
    "verify": _verify,
    "after_pipeline": _after_pipeline,
    "union": _union,
    "fanned_store": _fanned_store,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="distinct keys per version of the plain table")
    parser.add_argument("--concepts", type=int, default=100_000, help="keys of the fanned-out table")
    parser.add_argument("--languages", type=int, default=10, help="target languages of the fanned-out table")
    parser.add_argument("--steps", default=",".join(STEPS + FANNED_STEPS), help="comma-separated steps to run")
    parser.add_argument("--dir", help="where the tables go (kept; reused when they match the flags); default a temporary directory")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # a child process: run this one step
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # a child process: write the tables
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(Path(args.dir), args.step)))
        return
    if args.prepare:
        prepare(Path(args.dir), args.rows, args.concepts, args.languages)
        return
    with tempfile.TemporaryDirectory(prefix="bulkinfer-publish-bench-") as tmp:
        root = Path(args.dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        # In a child: this process stays small, so nothing of it is counted in the steps' figures.
        flags = ["--rows", str(args.rows), "--concepts", str(args.concepts), "--languages", str(args.languages)]
        subprocess.run([sys.executable, __file__, "--dir", str(root), "--prepare", *flags], check=True)
        prepared_s = time.perf_counter() - start
        results = []
        for step in args.steps.split(","):
            # A fresh process per step: its peak RSS is its own; the files it writes are the step's to replace.
            command = [sys.executable, __file__, "--dir", str(root), "--step", step]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"step {step} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr)
    summary = {
        "rows": args.rows,
        "fanned_out": {"concepts": args.concepts, "languages": args.languages, "rows": args.concepts * args.languages},
        "prepare_s": round(prepared_s, 1),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "steps": results,
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
