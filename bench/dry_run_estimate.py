"""Benchmark: the dry run's engine-time estimate against the real run's, on the tiny local model (prints figures).

    python bench/dry_run_estimate.py --rows 66 --repeats 3

Each repeat, on a fresh table: a first run publishes a version (its engine seconds per
generated prompt are the dry run's profile), then ``--full --dry_run`` estimates a rerun
of the same corpus, then that rerun runs for real. Every run is a ``bulkinfer run``
process of its own, so each real run's engine time includes an engine start, as the
profile's does. Prints, per repeat, the estimate, the real engine seconds and their
ratio, and the medians. The counts and the cost arithmetic are checked exactly by
``tests/pipelines/test_operate_engine.py``; this is the figure a shared machine moves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bulkinfer.models.tiny import build_tiny_llama


def _run(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "bulkinfer.cli", "run", *args], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"bulkinfer run {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def _ungated_synonyms(directory: Path) -> str:
    """The synonyms task without its quality gates: the tiny random model answers noise, which they rightly refuse."""
    raw = yaml.safe_load((resources.files("bulkinfer.tasks.builtin") / "synonyms.yaml").read_text(encoding="utf-8"))
    raw["gates"] = {"max_failed_rate": 1.0}
    path = directory / "synonyms-ungated.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return str(path)


def _one_repeat(common: list[str], table: Path) -> dict:
    """First run, dry run of a full rerun, the full rerun: the estimate and the real engine seconds."""
    _run(*common, "--run_id", "v1")
    estimate = _run(*common, "--full", "--dry_run")["tables"][str(table)]
    real = _run(*common, "--full", "--run_id", "v2")
    progress = json.loads((table / "versions" / "v2" / "progress.json").read_text())
    estimated, measured = estimate["estimate"]["engine_seconds"], progress["engine_seconds"]
    return {
        "prompts": estimate["prompts"],
        "generated": real["counts"]["generated"],
        "estimate_engine_s": estimated,
        "real_engine_s": round(measured, 1),
        "estimate_over_real": round(estimated / measured, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=66, help="distinct queries in the corpus (default 66, the engine test's size)")
    parser.add_argument("--repeats", type=int, default=3, help="first run, dry run and rerun, this many times (default 3)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_llama(root / "model")
        corpus = root / "queries.parquet"
        pq.write_table(pa.table({"query": [f"query {n}" for n in range(args.rows)]}), corpus)
        task = _ungated_synonyms(root)
        rows = []
        for repeat in range(args.repeats):
            table = root / f"table{repeat}"
            common = ["--task", task, "--input", str(corpus), "--output", str(table), "--model", str(model), "--max_model_len", "512"]
            rows.append(_one_repeat(common, table))
            print(json.dumps(rows[-1]), flush=True)
        ratios = [r["estimate_over_real"] for r in rows]
        print(json.dumps({"rows": args.rows, "repeats": args.repeats, "median_estimate_over_real": statistics.median(ratios)}))


if __name__ == "__main__":
    main()
