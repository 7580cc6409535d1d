"""Benchmark: how long one ~1 MB POST holds the service's event loop, by what its queries hold (prints figures; not a test).

python bench/http_expanding_queries.py [--repeats 7]

Starts ``bulkinfer serve`` (one uvicorn worker) on a small table and times POST
/v1/lookup bodies of about 1 MB: ASCII queries; queries of U+FDFA, which NFKC expands
18-fold (each short enough to pass a length check made before NFKC); and the longest
U+FDFA batch the service accepts (each query within ``--max_query_chars`` after NFKC).
While a request is answered, a probe GET /healthz on another connection waits: its
latency is how long the event loop was held. Figures are medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bulkinfer.testing import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import write_version  # noqa: E402


def _post(port: int, body: bytes) -> tuple[int, float]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/lookup", data=body, headers={"content-type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        e.read()
        status = e.code
    return status, time.perf_counter() - started


def _probe_during(port: int, body: bytes) -> tuple[int, float, float]:
    """POSTs ``body``; meanwhile GETs /healthz every 2 ms; returns the POST's status and time, and the slowest probe."""
    done = threading.Event()
    slowest = [0.0]

    def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=60) as response:
                response.read()
            slowest[0] = max(slowest[0], time.perf_counter() - started)
            time.sleep(0.002)

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(0.05)
    status, seconds = _post(port, body)
    done.set()
    thread.join()
    return status, seconds, slowest[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "table"
        write_version(table, "v1", {f"query {i}": [f"answer {i}"] for i in range(1000)})
        port = free_port()
        command = [sys.executable, "-m", "bulkinfer.cli", "serve", "--table", str(table), "--port", str(port)]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.2)
            bodies = {
                "ascii, 1000 x 1000 chars": json.dumps({"queries": ["a" * 1000] * 1000}).encode(),
                "U+FDFA, 1000 x 340 chars (18x after NFKC)": json.dumps({"queries": ["\ufdfa" * 340] * 1000}, ensure_ascii=False).encode(),
                "U+FDFA, 1000 x 56 chars (1,008 after NFKC)": json.dumps({"queries": ["\ufdfa" * 56] * 1000}, ensure_ascii=False).encode(),
            }
            print(f"{'body':45} {'bytes':>9} {'status':>6} {'POST ms':>8} {'slowest probe ms':>17}")
            for name, body in bodies.items():
                runs = [_probe_during(port, body) for _ in range(args.repeats)]
                status = runs[0][0]
                post = statistics.median(r[1] for r in runs) * 1000
                probe = statistics.median(r[2] for r in runs) * 1000
                print(f"{name:45} {len(body):>9,} {status:>6} {post:>8.1f} {probe:>17.1f}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
