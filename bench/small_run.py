"""Fixed cost of one job run: a 9-row corpus with the tests' fake handler, in one process.

    PYTHONPATH=. python bench/small_run.py [--runs 5]

What the many small job runs of the test suite (and the tiny-model bench's variant c) pay
whatever the corpus size: planning, Beam building, translating and running the graph, the
manifest, the run report, the store and match index, the publish. Prints the median and
each run's wall time, after one warm-up run, as JSON, with the time of rendering the last
version's run report once more (``report_s``), its share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

QUERIES = ["Covid Vaccine", "  covid   VACCINE ", "cheap flights", "Cheap Flights", "used cars", None, "", "   ", "\x00\x07"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from bulkinfer.pipelines.cache_job import run
    from bulkinfer.tools.report import render_report
    from tests.conftest import write_corpus
    from tests.fakes import FakeHandler

    root = Path(tempfile.mkdtemp(prefix="bulkinfer-small-run-"))
    corpus = write_corpus(root / "queries.parquet", QUERIES)
    walls = []
    for i in range(args.runs + 1):
        argv = ["--task", "synonyms", "--input", str(corpus), "--output", str(root / f"t{i}"), "--model", "fake", "--run_id", "r"]
        start = time.perf_counter()
        run(argv, model_handler=FakeHandler())
        walls.append(time.perf_counter() - start)
    start = time.perf_counter()
    render_report(str(root / f"t{args.runs}"), "r")
    report = time.perf_counter() - start
    timed = walls[1:]
    figures = {"median_s": round(statistics.median(timed), 3), "walls_s": [round(w, 3) for w in timed], "report_s": round(report, 3)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
