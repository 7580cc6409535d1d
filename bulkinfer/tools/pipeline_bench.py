"""The job's own cost, without the engine: ``bulkinfer bench --pipeline --rows N``.

Runs the real cache job (every stage, Parquet in, published table out) over a corpus
of N distinct queries with :class:`InstantHandler` in place of vLLM: a ModelHandler
that answers every prompt at once with a short list of its own. What is left is the
host-side work of the pipeline (reading, normalising, deduping, reuse, prompts,
parsing, checkpoints, writing, accounting, gates, the lookup store), which bounds
throughput however fast the engine is.

Two runs per repeat, each in a fresh process so its peak RSS is its own: a full run
into an empty table, then an unchanged rerun of the same corpus (every answer
reused, nothing generated). Figures are medians over the repeats.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ANSWER = " {key} one, {key} two, {key} three"
"""What the stand-in engine answers to a prompt: three synonyms made from its key. Distinct per key as a
real model's answers are; one answer shared by every key would make each item ambiguous between all
the concepts, a case the match index's summary is not built for."""


class StandInModel:
    """What the stand-in engine loads: nothing (Beam keeps a weak reference to the loaded model)."""


def _instant_handler() -> Any:
    # Beam is imported only where the job runs, never by the CLI's import.
    from apache_beam.metrics import Metrics

    from bulkinfer.format.records import METRICS_NAMESPACE, Generation
    from bulkinfer.models.beam_inference import ModelHandler

    class InstantHandler(ModelHandler):
        """Answers every prompt with :data:`ANSWER` for its key at once, counting generations like the real handler."""

        def __init__(self) -> None:
            super().__init__(min_batch_size=1, max_batch_size=4096)
            self._generated = Metrics.counter(METRICS_NAMESPACE, "prompts_generated")

        def load_model(self) -> StandInModel:
            return StandInModel()

        def get_num_bytes(self, batch: Sequence[Any]) -> int:
            # As the vLLM handler counts; Beam's default pickles the whole batch to measure it.
            return sum(len(r.prompt) for r in batch)

        def run_inference(self, batch: Sequence[Any], model: StandInModel, inference_args: Any = None) -> list[Any]:
            self._generated.inc(len(batch))
            return [
                Generation(
                    request=r, text=ANSWER.format(key=r.key), prompt_tokens=len(r.prompt) // 4, output_tokens=9, finish_reason="stop"
                )
                for r in batch
            ]

    return InstantHandler()


def write_corpus(path: Path, rows: int) -> Path:
    """N distinct queries of two to four words in one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = ["cheap", "flights", "covid", "vaccine", "used", "cars", "near", "me", "best", "hotel", "rome", "berlin"]
    queries = [f"{words[i % 12]} {words[(i // 12) % 12]} q{i}" for i in range(rows)]
    pq.write_table(pa.table({"query": pa.array(queries, pa.string())}), path, row_group_size=100_000)
    return path


def _child(argv: list[str]) -> None:
    from bulkinfer.pipelines.cache_job import run

    manifest = run(argv, model_handler=_instant_handler())
    print(json.dumps({"counts": manifest["counts"]}))


def run_pipeline_bench(rows: int, repeats: int = 3, workdir: str | None = None) -> dict[str, Any]:
    """Full run and unchanged rerun of the job with the stand-in engine; medians over ``repeats``.

    Returns:
        ``{"rows", "repeats", "full": {...}, "rerun": {...}}`` with wall seconds,
        rows/s, µs per row, CPU seconds of the job's process and peak RSS (MB) for each.
    """
    with tempfile.TemporaryDirectory(prefix="bulkinfer-pipeline-bench-", dir=workdir) as tmp:
        root = Path(tmp)
        corpus = write_corpus(root / "queries.parquet", rows)
        runs: dict[str, list[dict[str, Any]]] = {"full": [], "rerun": []}
        for i in range(repeats):
            table = root / f"table-{i}"
            base = ["--task", "synonyms", "--input", str(corpus), "--output", str(table), "--model", "stand-in"]
            runs["full"].append(_measure([*base, "--run_id", "full"], root / f"full-{i}.log"))
            runs["rerun"].append(_measure([*base, "--run_id", "rerun"], root / f"rerun-{i}.log"))
    return {"rows": rows, "repeats": repeats, **{name: _median(samples, rows) for name, samples in runs.items()}}


def _measure(argv: list[str], log: Path) -> dict[str, Any]:
    start = time.perf_counter()
    with log.open("w") as err:  # Beam logs plenty: a file, so a full pipe never blocks the child
        command = [sys.executable, "-m", "bulkinfer.tools.pipeline_bench", *argv]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True)
        out = child.stdout.read() if child.stdout else ""
        # wait4 gives this child's own resource usage (its peak RSS), not the maximum over all children.
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = code = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"pipeline bench run {' '.join(argv)} failed with exit {code}: {log.read_text()[-2000:]}")
    counts = json.loads(out.strip().splitlines()[-1])["counts"]
    return {
        "seconds": seconds,
        # CPU seconds of the run's own process: on a shared machine, less at the mercy of other load than wall time.
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "generated": counts["generated"],
        "reused": counts["reused"],
    }


def _median(samples: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    seconds = statistics.median(s["seconds"] for s in samples)
    return {
        "wall_s": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "us_per_row": round(seconds / rows * 1e6, 1),
        "cpu_s": round(statistics.median(s["cpu_s"] for s in samples), 2),
        "peak_rss_mb": round(statistics.median(s["peak_rss_mb"] for s in samples)),
        "generated": samples[-1]["generated"],
        "reused": samples[-1]["reused"],
        "all_wall_s": [round(s["seconds"], 2) for s in samples],
    }


if __name__ == "__main__":
    _child(sys.argv[1:])
