"""Benchmark: export a 1M-row table to a local redis-server (prints figures; not a test).

python bench/redis_export.py [--rows 1000000] [--repeats 3]

Starts ``redis-server`` on a free loopback port (no persistence), then exports
versions v1, v2, v3 ... of the same table (each export after the first also
expires the previous namespace). Reports keys per second of each export (write
time: from the first write to the pointer flip) and, for comparison, the same
keys written with one pipelined SET per key instead of MSET batches.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import orjson
from lookup_load import build

from bulkinfer.format import layout
from bulkinfer.lookup.redis_export import RedisExportConfig, connect, export_version
from bulkinfer.testing import redis_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed: apt-get install redis-server")
    with tempfile.TemporaryDirectory() as tmp:
        with redis_server(tmp) as url:
            client = connect(url)
            table = Path(tmp) / "table"
            for n in range(1, args.repeats + 1):
                build(table, args.rows, version=f"v{n}", publish=False)
            runs = []
            for n in range(1, args.repeats + 1):
                summary = export_version(str(table), RedisExportConfig(url=url, name="bench", grace_seconds=600), version=f"v{n}")
                runs.append(summary)
                print(json.dumps({k: summary[k] for k in ("version", "keys", "seconds", "keys_per_second", "expiring")}))
            # The alternative measured against MSET batches: one SET per key, pipelined 10,000 at a time.
            rows = layout.read_shards(str(layout.version_dir(str(table), "v1")), layout.PREDICTIONS, ["key", "synonyms", "model", "run_id"])
            started = time.perf_counter()
            pipe = client.pipeline(transaction=False)
            for batch in rows.to_batches(10_000):
                columns = [batch.column(name).to_pylist() for name in ("key", "synonyms", "model", "run_id")]
                for key, synonyms, model, run_id in zip(*columns, strict=True):
                    pipe.set(f"bulkinfer:setbench:v1:k:{key}", orjson.dumps({"synonyms": synonyms, "model": model, "run_id": run_id}))
                pipe.execute()
            set_seconds = time.perf_counter() - started
            info = client.info("memory")
            print(
                json.dumps(
                    {
                        "rows": rows.num_rows,
                        "mset_keys_per_second_median": statistics.median(r["keys_per_second"] for r in runs),
                        "pipelined_set_keys_per_second": round(rows.num_rows / set_seconds),
                        "redis_used_memory_mb": round(info["used_memory"] / 1e6),
                    }
                )
            )


if __name__ == "__main__":
    main()
