"""Match index: build time per 1M items, open time, memory, and in-process ``match`` latency.

    python bench/match_speed.py --items 1000000 --queries 20000

Synthetic concepts (``--items / 10`` of them, 10 items each, from a ``--vocab``-word
vocabulary; one item in ten a single word, the rest 2-3 words; the last item of a
fifth of the concepts copied from another concept, so those are ambiguous) are
written as one published version; the index is built the way the job builds it at
publish. One concept in twenty has Chinese items instead (1-2 "words" of 2-4
characters, written without spaces). Queries are 10 random vocabulary words,
upper-cased, with 0-2 items planted in them; CJK queries are 10 such words run
together (~30 characters) with 0-2 Chinese items planted. Latency is
``PredictionTable.match`` per query (key normalisation included), p50/p99 over all
queries after a warm-up pass, then exact matches and CJK phrase matches.
``--vocab 50000`` is a harsher case: at 1M items nearly every word of a query is an
item of its own, so each query has a dozen candidate matches.

The build and the opening run in fresh processes: the opening one reports its
resident memory (VmRSS) after ``import bulkinfer``, after opening the index (and
mapping whatever the index maps before its first match), and after 1,000 phrase
matches.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _cjk_words(rng: random.Random, n: int) -> list[str]:
    common = [chr(cp) for cp in range(0x4E00, 0x4E00 + 3000)]
    return list({"".join(rng.choice(common) for _ in range(rng.randint(2, 4))) for _ in range(n)})


_CHILD = """
import json, resource, time
def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
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
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")

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
    cjk_vocab = _cjk_words(rng, 20_000)
    items = [
        [" ".join(rng.sample(vocab, 1 if rng.random() < 0.1 else rng.randint(2, 3))) for _ in range(10)]
        if n % 20
        else ["".join(rng.sample(cjk_vocab, rng.randint(1, 2))) for _ in range(10)]
        for n in range(len(keys))
    ]
    flat = [item for n, answer in enumerate(items) if n % 20 for item in answer]
    flat_cjk = [item for n, answer in enumerate(items) if not n % 20 for item in answer]
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
        queries = []
        for _ in range(args.queries):
            words = rng.sample(vocab, 10)
            for _ in range(rng.randint(0, 2)):
                planted = rng.choice(flat).split()
                at = rng.randrange(0, 10)
                words[at : at + len(planted)] = planted
            queries.append(" ".join(words[:10]).upper())
        cjk_queries = []
        for _ in range(args.queries // 4):
            words = rng.sample(cjk_vocab, 10)
            for _ in range(rng.randint(0, 2)):
                words[rng.randrange(0, 10)] = rng.choice(flat_cjk)
            cjk_queries.append("".join(words))
        loaded_in = _child(
            "import bulkinfer.lookup.match\n"
            "from bulkinfer import open_table\n"
            "imported = rss_mib()\n"
            "started = time.perf_counter()\n"
            f"table = open_table({str(root)!r})\n"
            "index = table.match_index()\n"
            "opened = time.perf_counter() - started\n"
            "index.load_automaton()\n"
            "loaded = time.perf_counter() - started\n"
            "after_open = rss_mib()\n"
            f"for query in {queries[-1000:]!r}:\n"
            "    table.match(query)\n"
            "out(opened=opened, loaded=loaded, imported_rss=imported, open_rss=after_open, matched_rss=rss_mib())"
        )
        summary = match.MatchIndex(vdir).meta
        sizes = {path.name: path.stat().st_size for path in sorted(vdir.glob("match.*"))}
        table = open_table(str(root))
        table.match_index().load_automaton()
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
        cjk, cjk_found = [], 0
        for query in cjk_queries:
            t0 = time.perf_counter_ns()
            got = table.match(query)
            cjk.append(time.perf_counter_ns() - t0)
            cjk_found += bool(got["matches"])
        # The same phrase matches timed in CPU time of this thread: what a match costs when the
        # process is not preempted (wall-clock tails on a shared machine are mostly waiting for a core).
        cpu = []
        for query in queries:
            t0 = time.thread_time_ns()
            table.match(query)
            cpu.append(time.thread_time_ns() - t0)
        q = statistics.quantiles(timings, n=100)
        e = statistics.quantiles(exact, n=100)
        c = statistics.quantiles(cjk, n=100)
        u = statistics.quantiles(cpu, n=100)
        items_n = summary["items"]
        print(f"items {items_n:,} (concepts {summary['concepts']:,}, ambiguous {summary['ambiguous_items']:,})")
        build = built["seconds"]
        print(
            f"build {build:.1f} s ({build / items_n * 1e6:.1f} s per 1M items); peak RSS of the building process {built['rss_mib']:.0f} MiB"
        )
        print("files: " + ", ".join(f"{name} {size / 2**20:.0f} MiB" for name, size in sizes.items()))
        print(
            f"open_table + open the index {loaded_in['opened'] * 1e3:.0f} ms; ready for the first match (load_automaton) "
            f"{loaded_in['loaded']:.3f} s after the start; RSS after import {loaded_in['imported_rss']:.0f} MiB, "
            f"ready {loaded_in['open_rss']:.0f} MiB, after 1,000 phrase matches {loaded_in['matched_rss']:.0f} MiB"
        )
        found_n = sum(len(table.match(query)["matches"]) for query in queries[:2000]) / 2000
        print(f"matches per query (mean of 2,000): {found_n:.1f}")
        print(
            f"phrase match, 10-word queries ({len(timings):,}, {found / len(timings):.0%} with a match): "
            f"p50 {q[49] / 1e3:.1f} µs, p90 {q[89] / 1e3:.1f} µs, p99 {q[98] / 1e3:.1f} µs, max {max(timings) / 1e3:.0f} µs"
        )
        print(f"the same in thread CPU time: p50 {u[49] / 1e3:.1f} µs, p90 {u[89] / 1e3:.1f} µs, p99 {u[98] / 1e3:.1f} µs")
        print(f"exact match: p50 {e[49] / 1e3:.1f} µs, p99 {e[98] / 1e3:.1f} µs")
        print(
            f"CJK phrase match, ~30-character queries ({len(cjk):,}, {cjk_found / len(cjk):.0%} with a match): "
            f"p50 {c[49] / 1e3:.1f} µs, p90 {c[89] / 1e3:.1f} µs, p99 {c[98] / 1e3:.1f} µs"
        )
        table.close()
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
