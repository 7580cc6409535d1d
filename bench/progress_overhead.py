"""Benchmark: the job's own cost around the engine, with an instant stand-in engine (prints figures).

    python bench/progress_overhead.py --rows 200000 --repeats 3

Runs the real job (Beam DirectRunner, Parquet in, published table out) with a model
handler that answers at once, so what is timed is everything but generation: reading,
keying, reuse, prompts, parsing, writing, publishing, and the run's progress counting,
manifest, metrics and report. Run it on two checkouts to compare them on one machine;
figures are medians of ``--repeats`` ``--full`` runs over one table.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.ml.inference.base import ModelHandler

from bulkinfer.format.records import Generation, PromptRequest
from bulkinfer.pipelines.cache_job import run


class _Model:
    """Stands where the engine would (Beam keeps a weak reference to it)."""


class InstantHandler(ModelHandler):
    """Answers every prompt at once with a fixed two-item list."""

    def load_model(self) -> _Model:
        return _Model()

    def run_inference(self, batch: Sequence[PromptRequest], model: Any, inference_args: Any = None) -> list[Generation]:
        return [Generation(request=r, text=" alpha, beta", prompt_tokens=60, output_tokens=4, finish_reason="stop") for r in batch]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Two rows per key: the keying and merging have work to do.
        queries = [
            f"Query {n % (args.rows // 2)} {n * 7919 % 1000 % 7}" if n % 2 else f"query {n % (args.rows // 2)}" for n in range(args.rows)
        ]
        pq.write_table(pa.table({"query": queries}), root / "q.parquet")
        common = ["--task", "synonyms", "--input", str(root / "q.parquet"), "--output", str(root / "table"), "--model", "instant"]
        seconds = []
        for i in range(args.repeats):
            start = time.perf_counter()
            manifest = run([*common, "--full", "--run_id", f"r{i}"], model_handler=InstantHandler())
            seconds.append(time.perf_counter() - start)
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "keys": manifest["counts"]["keys"],
                    "generated": manifest["counts"]["generated"],
                    "wall_s": [round(s, 2) for s in seconds],
                    "median_wall_s": round(statistics.median(seconds), 2),
                }
            )
        )


if __name__ == "__main__":
    main()
