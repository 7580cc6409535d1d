"""Benchmark: the HTTP lookup service under load, with a publish mid-run (prints figures; not a test).

python bench/http_load.py [--rows 1000000] [--seconds 20] [--connections 32] [--app bulkinfer|fastapi] [--loadgen wrk|python]
python bench/http_load.py --route match --rows 100000   # GET /v1/match: phrase matches, each version's match index built first

Builds a table with version v1 published and v2 written (store included, as the job
leaves it just before publishing), starts the service as a subprocess on a free
loopback port (one uvicorn worker), and loads it with ``--connections`` keep-alive
HTTP/1.1 connections, each sending GET /v1/lookup for random queries (80% hits spelt
in upper case, 20% misses) one after another, for ``--seconds``. Half way through,
``CURRENT`` is swapped to v2.

Load generators: ``wrk`` (apt-get install wrk; one thread, so it takes one core and
leaves the other to the server) with an observer connection in this process that
checks every answer's version; or ``python`` (asyncio in this process, which also
costs the server CPU). Reports requests per second, latency percentiles, errors
(anything but 200, and socket errors), which versions answered, and whether any
request that started after the first v2 answer was still answered by v1 (a mix).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

from lookup_load import build, probes

from bulkinfer.format import layout
from bulkinfer.lookup import match, store
from bulkinfer.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
Seen = list[tuple[float, float, int, str]]
"""(start, end, status, version) of each request."""


def _start(app: str, table: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if app == "fastapi":
        command = [sys.executable, str(ROOT / "bench" / "fastapi_app.py"), table, str(port)]
    else:
        command = [sys.executable, "-m", "bulkinfer.cli", "serve", "--table", table, "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not come up in 120 s")


async def _connection(port: int, requests: list[bytes], stop_at: float, out: Seen, errors: list[str]) -> None:
    rng = random.Random(port + len(out))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            request = requests[rng.randrange(len(requests))]
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, version = 0, ""
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-bulkinfer-version":
                    version = value.strip().decode()
            await reader.readexactly(length)
            out.append((started, time.perf_counter(), status, version))
            if status != 200:
                errors.append(f"HTTP {status}")
    except (OSError, asyncio.IncompleteReadError) as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        writer.close()


async def _load(port: int, requests: list[bytes], seconds: float, connections: int, publish: tuple[str, str]) -> dict:
    out: list[tuple[float, float, int, str]] = []
    errors: list[str] = []
    started = time.perf_counter()
    stop_at = started + seconds
    loop = asyncio.get_running_loop()
    published_at: list[float] = []

    def flip() -> None:
        layout.publish(*publish)
        published_at.append(time.perf_counter())

    loop.call_later(seconds / 2, flip)
    await asyncio.gather(*(_connection(port, requests, stop_at, out, errors) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latency = sorted(end - start for start, end, _, _ in out)
    versions: dict[str, int] = {}
    for _, _, _, version in out:
        versions[version] = versions.get(version, 0) + 1
    first_new = min((end for _, end, _, version in out if version == publish[1]), default=None)
    mixed = sum(1 for start, _, _, version in out if version != publish[1] and first_new is not None and start > first_new)
    return {
        "loadgen": "python asyncio",
        "requests": len(out),
        "seconds": round(elapsed, 2),
        "requests_per_second": round(len(out) / elapsed),
        "p50_ms": round(latency[len(latency) // 2] * 1000, 2),
        "p99_ms": round(latency[int(len(latency) * 0.99)] * 1000, 2),
        "max_ms": round(latency[-1] * 1000, 2),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "versions": versions,
        "switch_seconds_after_publish": round(first_new - published_at[0], 3) if first_new and published_at else None,
        "old_version_after_switch": mixed,
    }


_WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("BULKINFER_PATHS")) do paths[#paths + 1] = line end
math.randomseed(os.time())
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
"""


def _observe(port: int, paths: list[str], stop: threading.Event, seen: Seen, errors: list[str]) -> None:
    import http.client

    rng = random.Random(7)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn.request("GET", paths[rng.randrange(len(paths))])
            response = conn.getresponse()
            response.read()
        except OSError as e:
            errors.append(f"observer {type(e).__name__}: {e}")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            continue
        seen.append((started, time.perf_counter(), response.status, response.getheader("x-bulkinfer-version", "")))
        if response.status != 200:
            errors.append(f"observer HTTP {response.status}")
        time.sleep(0.002)


def _wrk(port: int, paths: list[str], seconds: float, connections: int, publish: tuple[str, str], tmp: str) -> dict:
    paths_file, script = Path(tmp) / "paths.txt", Path(tmp) / "random_paths.lua"
    paths_file.write_text("\n".join(paths) + "\n")
    script.write_text(_WRK_SCRIPT)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}"]
    wrk = subprocess.Popen(command, env={**os.environ, "BULKINFER_PATHS": str(paths_file)}, stdout=subprocess.PIPE, text=True)
    seen: list[tuple[float, float, int, str]] = []
    errors: list[str] = []
    stop = threading.Event()
    observer = threading.Thread(target=_observe, args=(port, paths, stop, seen, errors))
    observer.start()
    time.sleep(seconds / 2)
    layout.publish(*publish)
    published_at = time.perf_counter()
    report, _ = wrk.communicate(timeout=seconds + 60)
    stop.set()
    observer.join()

    def number(pattern: str) -> float:
        found = re.search(pattern, report)
        return float(found.group(1)) if found else 0.0

    def ms(label: str) -> float:
        found = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", report, re.M)
        if not found:
            return float("nan")
        return round(float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)], 2)

    socket_errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", report))
    non_2xx = int(number(r"Non-2xx or 3xx responses: (\d+)"))
    versions: dict[str, int] = {}
    for _, _, _, version in seen:
        versions[version] = versions.get(version, 0) + 1
    first_new = min((end for _, end, _, version in seen if version == publish[1]), default=None)
    mixed = sum(1 for start, _, _, version in seen if version != publish[1] and first_new is not None and start > first_new)
    return {
        "loadgen": "wrk -t1",
        "requests": int(number(r"(\d+) requests in")),
        "requests_per_second": round(number(r"Requests/sec:\s+([\d.]+)")),
        "p50_ms": ms("50%"),
        "p90_ms": ms("90%"),
        "p99_ms": ms("99%"),
        "errors": socket_errors + non_2xx + len(errors),
        "error_kinds": {"non_2xx": non_2xx, "socket": socket_errors, "observer": errors[:5]},
        "observer_versions": versions,
        "switch_seconds_after_publish": round(first_new - published_at, 3) if first_new else None,
        "old_version_after_switch": mixed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--app", choices=["bulkinfer", "fastapi"], default="bulkinfer")
    parser.add_argument("--loadgen", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--route", choices=["lookup", "match"], default="lookup", help="match: the probes inside a longer query")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        keys = build(Path(tmp), args.rows)
        store.write_store(tmp, "v1")
        build(Path(tmp), args.rows, version="v2", suffix=" new", publish=False)
        store.write_store(tmp, "v2")
        if args.route == "match":
            for version in ("v1", "v2"):
                match.write_match_index(tmp, version)
            paths = [f"/v1/match?q={quote('where to find ' + q + ' near me')}" for q in probes(keys, 50_000)]
        else:
            paths = [f"/v1/lookup?q={quote(q)}" for q in probes(keys, 50_000)]
        requests = [f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for path in paths]
        port = free_port()
        server = _start(args.app, tmp, port)
        try:
            if args.loadgen == "wrk":
                result = _wrk(port, paths, args.seconds, args.connections, (tmp, "v2"), tmp)
            else:
                result = asyncio.run(_load(port, requests, args.seconds, args.connections, (tmp, "v2")))
        finally:
            server.terminate()
            server.wait(timeout=30)
        print(json.dumps({"app": args.app, "route": args.route, "rows": len(keys), "connections": args.connections, **result}))


if __name__ == "__main__":
    main()
