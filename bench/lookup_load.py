"""Benchmark: build a 1M-row synonyms table, open it and look keys up in process (prints figures; not a test).

python bench/lookup_load.py [--rows 1000000] [--probes 100000]

Times the store build (what the job adds before publishing), ``open_table`` (median
of 3 opens), ``get`` over random hits (queries upper-cased, so normalisation does
work) and misses, and ``get_many`` in batches of 100.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bulkinfer.format import layout
from bulkinfer.keys import normalize_key
from bulkinfer.lookup import store
from bulkinfer.lookup.table import open_table


def build(table_dir: Path, rows: int, version: str = "v1", suffix: str = "", publish: bool = True) -> list[str]:
    """Writes one version of a synonyms table (Parquet shard and manifest, no store); returns its keys."""
    rng = random.Random(0)
    words = [f"w{n}" for n in range(5000)]
    keys = sorted({normalize_key(" ".join(rng.choices(words, k=3)) + f" {i}") for i in range(rows)})
    vdir = table_dir / "versions" / version
    vdir.mkdir(parents=True)
    provenance = {
        "model": "m",
        "model_digest": "d",
        "task": "synonyms",
        "task_fingerprint": "f",
        "fingerprint": "g",
        "engine": "e",
        "run_id": version,
    }
    table = pa.table(
        {
            "key": keys,
            "query": keys,
            "synonyms": [[f"{k} a{suffix}", f"{k} b", f"{k} c"] for k in keys],
            "raw_output": [f" {k} a{suffix}, {k} b, {k} c" for k in keys],
            "source_rows": pa.array([1] * len(keys), pa.int64()),
            **{name: [value] * len(keys) for name, value in provenance.items()},
        }
    )
    pq.write_table(table, vdir / "predictions-00000-of-00001.parquet")
    layout.write_manifest(str(vdir), {"version": version, "output_column": "synonyms", "output_kind": "list"})
    if publish:
        layout.publish(str(table_dir), version)
    return keys


def probes(keys: list[str], count: int, seed: int = 1) -> list[str]:
    """``count`` queries: 80% hits spelt in upper case, 20% misses, shuffled."""
    rng = random.Random(seed)
    hits = [rng.choice(keys).upper() for _ in range(count * 4 // 5)]
    out = hits + [f"missing query {i}" for i in range(count - len(hits))]
    rng.shuffle(out)
    return out


def percentiles(ns: list[int]) -> dict[str, float]:
    ns = sorted(ns)
    return {"p50_us": round(ns[len(ns) // 2] / 1000, 1), "p99_us": round(ns[int(len(ns) * 0.99)] / 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = build(Path(tmp), args.rows)
        start = time.perf_counter()
        store.write_store(tmp, "v1")
        build_s = time.perf_counter() - start
        opens = []
        for _ in range(3):
            start = time.perf_counter()
            table = open_table(tmp)
            opens.append(time.perf_counter() - start)
        queries = probes(keys, args.probes)
        for q in queries[:1000]:  # warm the page cache and the statement cache
            table.get(q)
        lat = []
        for q in queries:
            start = time.perf_counter_ns()
            table.get(q)
            lat.append(time.perf_counter_ns() - start)
        batches = []
        for i in range(0, len(queries), 100):
            start = time.perf_counter_ns()
            table.get_many(queries[i : i + 100])
            batches.append(time.perf_counter_ns() - start)
        size = (Path(tmp) / "versions" / "v1" / store.STORE).stat().st_size
        print(
            json.dumps(
                {
                    "rows": len(table),
                    "store_build_seconds": round(build_s, 2),
                    "store_mb": round(size / 1e6, 1),
                    "open_seconds_median": round(statistics.median(opens), 4),
                    "get": percentiles(lat),
                    "get_many_100": percentiles(batches),
                }
            )
        )


if __name__ == "__main__":
    main()
