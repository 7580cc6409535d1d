"""Speed of ``normalize_key`` on ASCII and non-ASCII queries (µs per key, best of 7 rounds).

    PYTHONPATH=. python bench/key_speed.py

The queries are ``bench/langid_queries.tsv`` (21 languages), each also upper-cased, so
the case fold has work to do.
"""

from __future__ import annotations

import time
from pathlib import Path

from bulkinfer.keys import normalize_key

QUERIES = Path(__file__).with_name("langid_queries.tsv")


def main() -> None:
    queries = [line.split("\t")[1] for line in QUERIES.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    queries += [q.upper() for q in queries]
    for name, batch in (("ascii", [q for q in queries if q.isascii()]), ("non-ascii", [q for q in queries if not q.isascii()])):
        best = float("inf")
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(100):
                for query in batch:
                    normalize_key(query)
            best = min(best, (time.perf_counter() - start) / (100 * len(batch)))
        print(f"{name}: {len(batch)} queries, {best * 1e6:.2f} µs per key")


if __name__ == "__main__":
    main()
