"""Benchmark: `bulkinfer compare` (and `export-training`) on two large synonym tables (prints figures).

    python bench/compare_cost.py --rows 1000000

Writes two published versions straight into the table layout (no job run: the
point is the reader's cost), A with 3-5 items per key, B sharing 95% of A's keys:
of the shared rows 30% identical, 30% the same items in another order or case
(not exact, Jaccard 1), 40% with some items replaced; plus 5% keys of its own.
Times ``compare_tables`` (and, with ``--export``, ``export_training`` of A to
JSONL) and prints the figures with the comparison's own measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bulkinfer.format import layout
from bulkinfer.format.records import prediction_schema
from bulkinfer.tasks.spec import load_task
from bulkinfer.tools.compare import compare_tables
from bulkinfer.tools.export_training import export_training

WORDS = [f"w{n}" for n in range(5000)]


def write_table(root: Path, name: str, model: str, keys: list[str], outputs: list[list[str]]) -> str:
    task = load_task("synonyms")
    n = len(keys)
    provenance = {"model": model, "model_digest": "d" * 16, "task": task.name, "task_fingerprint": task.fingerprint()}
    columns = {
        "key": keys,
        "query": keys,
        task.output_column: outputs,
        "raw_output": [" " + ", ".join(items) for items in outputs],
        "source_rows": [1] * n,
        "prompt_tokens": [40] * n,
        "output_tokens": [len(items) * 3 for items in outputs],
        "finish_reason": ["stop"] * n,
        **{column: [value] * n for column, value in provenance.items()},
        "fingerprint": ["f" * 16] * n,
        "engine": ["bench"] * n,
        "run_id": ["v1"] * n,
    }
    table = str(root / name)
    vdir = Path(layout.version_dir(table, "v1"))
    vdir.mkdir(parents=True)
    pq.write_table(pa.table(columns, schema=prediction_schema(task)), vdir / "predictions-00000-of-00001.parquet")
    manifest = {
        "version": "v1",
        "run_id": "v1",
        **provenance,
        "output_kind": task.output,
        "output_column": task.output_column,
        "task_spec": json.loads(json.dumps(dataclasses.asdict(task))),
        "counts": {"keys": n},
        "gates": {"passed": True, "failed": [], "thresholds": {}},
        "finished_at": "2026-11-24T00:00:00Z",
    }
    layout.write_manifest(str(vdir), manifest)
    layout.publish(table, "v1")
    return table


def make_pair(root: Path, rows: int) -> tuple[str, str]:
    rng = random.Random(0)
    keys_a = [f"query {n} {n * 7919 % 1000}" for n in range(rows)]
    out_a = [rng.sample(WORDS, rng.randint(3, 5)) for _ in range(rows)]
    keys_b, out_b = [], []
    for key, items in zip(keys_a[: int(rows * 0.95)], out_a, strict=False):
        roll = rng.random()
        if roll < 0.3:
            other = list(items)
        elif roll < 0.6:
            other = [item.upper() for item in reversed(items)]
        else:
            other = items[:2] + rng.sample(WORDS, rng.randint(1, 3))
        keys_b.append(key)
        out_b.append(other)
    extra = rows - len(keys_b)
    keys_b += [f"new query {n}" for n in range(extra)]
    out_b += [rng.sample(WORDS, 3) for _ in range(extra)]
    return write_table(root, "a", "teacher", keys_a, out_a), write_table(root, "b", "student", keys_b, out_b)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--export", action="store_true", help="also time export-training of table A to JSONL")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        table_a, table_b = make_pair(root, args.rows)
        figures: dict = {"rows": args.rows, "make_tables_s": round(time.perf_counter() - start, 1)}
        walls = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = compare_tables(table_a, table_b)
            walls.append(time.perf_counter() - start)
        figures["compare_s"] = [round(w, 2) for w in walls]
        figures["compare_median_s"] = round(statistics.median(walls), 2)
        figures["measures"] = {
            "shared": result.shared,
            "only_a": result.only_a,
            "only_b": result.only_b,
            "exact_rate": result.exact_rate,
            "jaccard_mean": result.jaccard_mean,
            "jaccard_median": result.jaccard_median,
            "same_set_rate": result.same_set_rate,
        }
        if args.export:
            start = time.perf_counter()
            exported = export_training(table_a, str(root / "sft.jsonl"))
            figures["export_s"] = round(time.perf_counter() - start, 2)
            figures["export_written"] = exported.written
            figures["export_mb"] = round((root / "sft.jsonl").stat().st_size / 1e6, 1)
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
