"""Match index: build time per 1M items, open time, automaton load, and in-process ``match`` latency.

    python bench/match_speed.py --items 1000000 --queries 20000

Synthetic concepts (``--items / 10`` of them, 10 items each, from a ``--vocab``-word
vocabulary; one item in ten a single word, the rest 2-3 words; the last item of a
fifth of the concepts copied from another concept, so those are ambiguous) are
written as one published version; the index is built the way the job builds it at
publish. Queries are 10 random vocabulary words, upper-cased, with 0-2 items planted
in them. Latency is ``PredictionTable.match`` per query (key normalisation
included), p50/p99 over all queries after a warm-up pass, then exact matches.
``--vocab 50000`` is a harsher case: at 1M items nearly every word of a query is an
item of its own, so each query has a dozen candidate matches.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _words(rng: random.Random, n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return list({"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n)})


_CHILD = """
import json, resource, time
def out(**figures):
    figures.update(seconds=time.perf_counter() - started, rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(figures))
"""


def _child(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD + code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--vocab", type=int, default=200_000)
    args = parser.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bulkinfer.format import layout
    from bulkinfer.keys import KEY_VERSION
    from bulkinfer.lookup import match, store
    from bulkinfer.lookup.table import open_table

    rng = random.Random(0)
    vocab = _words(rng, args.vocab)
    concepts = args.items // 10
    keys = sorted({" ".join(rng.sample(vocab, 2)) for _ in range(concepts)})
    items = [[" ".join(rng.sample(vocab, 1 if rng.random() < 0.1 else rng.randint(2, 3))) for _ in range(10)] for _ in keys]
    flat = [item for answer in items for item in answer]
    for answer in items[: len(items) // 5]:  # some items shared between concepts: ambiguity costs a little
        answer[-1] = rng.choice(flat)
    with tempfile.TemporaryDirectory(prefix="bulkinfer-match-bench-") as tmp:
        root = Path(tmp) / "table"
        vdir = root / "versions" / "v1"
        vdir.mkdir(parents=True)
        rows = pa.table(
            {
                "key": keys,
                "language": ["en"] * len(keys),
                "synonyms": pa.array(items, pa.list_(pa.string())),
                "model": ["m"] * len(keys),
                "run_id": ["v1"] * len(keys),
            }
        )
        pq.write_table(rows, vdir / "predictions-00000-of-00001.parquet")
        manifest = {"version": "v1", "output_column": "synonyms", "output_kind": "list", "run_id": "v1", "key_normalizer": KEY_VERSION}
        layout.write_manifest(str(vdir), manifest)
        store.write_store(str(root), "v1")
        del rows, items, keys  # the figures below come from fresh processes; free the generator's data
        # The build and the load run in processes of their own, so their peak memory is theirs alone.
        built = _child(
            "from bulkinfer.lookup import match\n"
            "started = time.perf_counter()\n"
            f"summary = match.write_match_index({str(root)!r}, 'v1')\n"
            "out(items=summary.items)"
        )
        layout.publish(str(root), "v1")
        loaded_in = _child(
            "from bulkinfer import open_table\n"
            "started = time.perf_counter()\n"
            f"index = open_table({str(root)!r}).match_index()\n"
            "opened = time.perf_counter() - started\n"
            "index.load_automaton()\n"
            "out(opened=opened)"
        )
        summary = match.MatchIndex(vdir).meta
        sizes = {name: (vdir / name).stat().st_size for name in (match.MATCH, match.AUTOMATON, match.CLAIMS)}
        table = open_table(str(root))
        table.match_index().load_automaton()

        queries = []
        for _ in range(args.queries):
            words = rng.sample(vocab, 10)
            for _ in range(rng.randint(0, 2)):
                planted = rng.choice(flat).split()
                at = rng.randrange(0, 10)
                words[at : at + len(planted)] = planted
            queries.append(" ".join(words[:10]).upper())
        for query in queries[:1000]:
            table.match(query)
        timings, found = [], 0
        for query in queries:
            t0 = time.perf_counter_ns()
            got = table.match(query)
            timings.append(time.perf_counter_ns() - t0)
            found += bool(got["matches"])
        exact = []
        for query in queries[:5000]:
            t0 = time.perf_counter_ns()
            table.match(query, exact=True)
            exact.append(time.perf_counter_ns() - t0)
        q = statistics.quantiles(timings, n=100)
        e = statistics.quantiles(exact, n=100)
        items_n = summary["items"]
        print(f"items {items_n:,} (concepts {summary['concepts']:,}, ambiguous {summary['ambiguous_items']:,})")
        build = built["seconds"]
        print(
            f"build {build:.1f} s ({build / items_n * 1e6:.1f} s per 1M items); peak RSS of the building process {built['rss_mib']:.0f} MiB"
        )
        print("files: " + ", ".join(f"{name} {size / 2**20:.0f} MiB" for name, size in sizes.items()))
        loaded = loaded_in["seconds"] - loaded_in["opened"]
        print(
            f"open_table + open the index {loaded_in['opened'] * 1e3:.0f} ms; automaton load {loaded:.2f} s; "
            f"peak RSS of that process {loaded_in['rss_mib']:.0f} MiB"
        )
        found_n = sum(len(table.match(query)["matches"]) for query in queries[:2000]) / 2000
        print(f"matches per query (mean of 2,000): {found_n:.1f}")
        print(
            f"phrase match, 10-word queries ({len(timings):,}, {found / len(timings):.0%} with a match): "
            f"p50 {q[49] / 1e3:.1f} µs, p90 {q[89] / 1e3:.1f} µs, p99 {q[98] / 1e3:.1f} µs, max {max(timings) / 1e3:.0f} µs"
        )
        print(f"exact match: p50 {e[49] / 1e3:.1f} µs, p99 {e[98] / 1e3:.1f} µs")
        table.close()


if __name__ == "__main__":
    main()
