"""Speed of ``normalize_key`` (µs per key, best of 9 interleaved rounds).

    PYTHONPATH=. python bench/key_speed.py
    git show b3ca8cf:bulkinfer/keys.py > /tmp/keys_v1.py && PYTHONPATH=. python bench/key_speed.py --against /tmp/keys_v1.py

The queries are ``bench/langid_queries.tsv`` (21 languages) as written (lowercase, most
already keys) and upper-cased (case folding has work to do). ``--against`` times another
version of ``bulkinfer/keys.py`` in the same process, round by round, so a busy machine
slows both alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path

from bulkinfer.keys import normalize_key

QUERIES = Path(__file__).with_name("langid_queries.tsv")


def _load(path: str) -> Callable[[str], str]:
    spec = importlib.util.spec_from_file_location("other_keys", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.normalize_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", help="path of another keys.py to time alongside")
    args = parser.parse_args()
    versions = {"this": normalize_key, **({"against": _load(args.against)} if args.against else {})}
    lower = [line.split("\t")[1] for line in QUERIES.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    batches = {
        "ascii, as written": [q for q in lower if q.isascii()],
        "ascii, upper-cased": [q.upper() for q in lower if q.isascii()],
        "non-ascii, as written": [q for q in lower if not q.isascii()],
        "non-ascii, upper-cased": [q.upper() for q in lower if not q.isascii()],
    }
    for name, batch in batches.items():
        best = dict.fromkeys(versions, float("inf"))
        for _ in range(9):
            for version, fn in versions.items():
                start = time.perf_counter()
                for _ in range(50):
                    for query in batch:
                        fn(query)
                best[version] = min(best[version], (time.perf_counter() - start) / (50 * len(batch)))
        print(f"{name} ({len(batch)} queries): " + ", ".join(f"{v} {t * 1e6:.2f} µs" for v, t in best.items()))


if __name__ == "__main__":
    main()
