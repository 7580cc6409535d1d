"""Benchmark: a full run vs a weekly rerun with 10% new keys, on the tiny local model (prints figures).

    python bench/rerun_cost.py --rows 100000

Runs the real job (Beam DirectRunner, vLLM CPU engine, tiny random Llama) three
times on one table: a full run over N distinct queries, a rerun over the same
corpus with 10% of the keys replaced by new ones, and a rerun of an unchanged
corpus. Prints wall times, generated/reused counts and the rerun/full ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bulkinfer.models.tiny import build_tiny_llama
from bulkinfer.pipelines.cache_job import run


def corpus(path: Path, keys: list[str]) -> str:
    pq.write_table(pa.table({"query": keys}), path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--new_share", type=float, default=0.10)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_llama(root / "model")
        keys = [f"query {n} {n * 7919 % 1000}" for n in range(args.rows)]
        n_new = int(args.rows * args.new_share)
        week2 = keys[n_new:] + [f"new query {n}" for n in range(n_new)]
        common = ["--task", "synonyms", "--output", str(root / "table"), "--model", str(model), "--max_model_len", "512"]
        figures = {"rows": args.rows, "new_keys": n_new}
        for label, data, run_id in (("full", keys, "w1"), ("rerun_10pct_new", week2, "w2"), ("rerun_unchanged", week2, "w3")):
            start = time.perf_counter()
            manifest = run([*common, "--input", corpus(root / f"{run_id}.parquet", data), "--run_id", run_id])
            figures[label] = {
                "wall_s": round(time.perf_counter() - start, 1),
                "generated": manifest["counts"]["generated"],
                "reused": manifest["counts"]["reused"],
                "engine_starts": manifest["counts"]["engine_starts"],
            }
        figures["rerun_10pct_over_full"] = round(figures["rerun_10pct_new"]["wall_s"] / figures["full"]["wall_s"], 3)
        figures["rerun_unchanged_over_full"] = round(figures["rerun_unchanged"]["wall_s"] / figures["full"]["wall_s"], 3)
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
