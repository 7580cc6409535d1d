"""Benchmark: candidate embedded stores for lookups, on the same 1M-row table (prints figures; not a test).

python bench/store_compare.py [--rows 1000000] [--probes 100000]

Each candidate holds key -> the JSON array the SQLite store writes, and a lookup
does what ``PredictionTable.get`` does: normalise, one read, decode into a row dict.
Candidates: ``sqlite`` (bulkinfer.lookup.store, standard library), ``lmdb`` (pip install
lmdb) and ``arrow+dict`` (the previous reader: Parquet into Arrow, a Python dict index).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow.parquet as pq
from lookup_load import build, percentiles, probes

from bulkinfer.format import layout
from bulkinfer.keys import normalize_key
from bulkinfer.lookup import store


def _sqlite(tmp: Path, pairs: list[tuple[str, bytes]]) -> tuple[Callable[[], Callable[[str], bytes | None]], Path]:
    path = tmp / "versions" / "v1" / store.STORE
    store.write_store(str(tmp), "v1")
    return lambda: store.Store(path).get, path


def _lmdb(tmp: Path, pairs: list[tuple[str, bytes]]) -> tuple[Callable[[], Callable[[str], bytes | None]], Path]:
    import lmdb

    path = tmp / "store.lmdb"
    env = lmdb.open(str(path), map_size=4 << 30, subdir=False, sync=False, writemap=True)
    with env.begin(write=True) as txn:
        cursor = txn.cursor()
        cursor.putmulti(((k.encode(), v) for k, v in pairs), append=True)
    env.close()

    opened: list = []

    def opener() -> Callable[[str], bytes | None]:
        for env in opened:  # LMDB refuses to open one file twice in a process
            env.close()
        opened[:] = [lmdb.open(str(path), subdir=False, readonly=True, lock=False)]
        txn = opened[0].begin(buffers=False)
        return lambda key: txn.get(key.encode())

    return opener, path


def _arrow(tmp: Path, pairs: list[tuple[str, bytes]]) -> tuple[Callable[[], Callable[[str], bytes | None]], Path]:
    shard = tmp / "versions" / "v1" / "predictions-00000-of-00001.parquet"

    def opener() -> Callable[[str], bytes | None]:
        rows = pq.read_table(shard).combine_chunks()
        index = dict(zip(rows.column("key").to_pylist(), range(rows.num_rows), strict=True))
        columns = [rows.column(name) for name in rows.column_names if name != "key"]

        def get(key: str) -> bytes | None:
            row = index.get(key)
            return None if row is None else orjson.dumps([c[row].as_py() for c in columns])  # stands for the row conversion

        return get

    return opener, shard


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=100_000)
    parser.add_argument("--only", nargs="*", default=["sqlite", "lmdb", "arrow+dict"])
    args = parser.parse_args()
    candidates = {"sqlite": _sqlite, "lmdb": _lmdb, "arrow+dict": _arrow}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        keys = build(tmp, args.rows)
        queries = probes(keys, args.probes)
        rows = layout.read_shards(str(tmp / "versions" / "v1"), layout.PREDICTIONS)
        columns = [name for name in rows.column_names if name not in ("key", "model", "model_digest", "task", "task_fingerprint")]
        pairs = [(k, orjson.dumps(list(v))) for k, *v in zip(*(rows.column(n).to_pylist() for n in ["key", *columns[1:]]), strict=True)]
        for name in args.only:
            start = time.perf_counter()
            opener, path = candidates[name](tmp, pairs)
            build_s = time.perf_counter() - start
            opens = []
            for _ in range(3):
                start = time.perf_counter()
                get = opener()
                opens.append(time.perf_counter() - start)
            for q in queries[:1000]:
                get(normalize_key(q))
            lat = []
            for q in queries:
                start = time.perf_counter_ns()
                value = get(normalize_key(q))
                if value is not None:
                    dict(zip(columns, orjson.loads(value), strict=False))
                lat.append(time.perf_counter_ns() - start)
            print(
                json.dumps(
                    {
                        "store": name,
                        "build_seconds": round(build_s, 2),
                        "mb_on_disk": round(path.stat().st_blocks * 512 / 1e6, 1),
                        "open_seconds_median": round(statistics.median(opens), 4),
                        **percentiles(lat),
                    }
                )
            )


if __name__ == "__main__":
    main()
