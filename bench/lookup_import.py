"""Start-up cost of the lookup side: ``from bulkinfer import open_table`` in a fresh interpreter.

    python bench/lookup_import.py [--runs 15] [--against SRC_DIR]

Each run starts a new Python process outside the repository and times the import
statement alone (interpreter start-up excluded), then prints the median, min and max
in milliseconds as JSON, with the heavy modules the import loaded. ``--against``
times another source tree of bulkinfer (for example ``git worktree add /tmp/old
REV``) through ``PYTHONPATH``, round by round, interleaved with this one, so a busy
machine slows both alike. Older trees exposed the API as ``bulkinfer.table``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

PROBE = """
import json, sys, time
start = time.perf_counter()
{statement}
elapsed = time.perf_counter() - start
heavy = sorted({{n.split(".")[0] for n in sys.modules}} & {{"apache_beam", "vllm", "torch", "grpc", "pyarrow"}})
print(json.dumps({{"ms": elapsed * 1000, "heavy": heavy}}))
"""


def _once(statement: str, pythonpath: str | None, cwd: str) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(statement=statement)], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _summary(samples: list[dict]) -> dict:
    ms = [s["ms"] for s in samples]
    return {
        "median_ms": round(statistics.median(ms), 1),
        "min_ms": round(min(ms), 1),
        "max_ms": round(max(ms), 1),
        "heavy": samples[-1]["heavy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--against", default=None, help="another bulkinfer source tree to time alongside, through PYTHONPATH")
    args = parser.parse_args()
    here, other = [], []
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.runs):
            here.append(_once("from bulkinfer import open_table", None, cwd))
            if args.against:
                other.append(_once("from bulkinfer.table import open_table", args.against, cwd))
    result = {"runs": args.runs, "this_tree": _summary(here)}
    if other:
        result["against"] = {"tree": args.against, **_summary(other)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
