"""`bulkinfer serve` over raw sockets: partial requests are cut off, parser rejections are JSON."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from bulkinfer.testing import free_port
from tests.conftest import write_version


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    table = tmp_path_factory.mktemp("limits") / "table"
    write_version(table, "v1", {"covid vaccine": ["covid jab"]})
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "bulkinfer.cli", "serve", "--table", str(table), "--port", str(port), "--request_timeout", "1"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        assert process.poll() is None and time.monotonic() < deadline, "bulkinfer serve did not come up"
        time.sleep(0.2)
    yield port
    process.terminate()
    process.wait(timeout=30)


def _read_all(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.settimeout(limit_s)
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks), time.monotonic() - started
        chunks.append(chunk)


def _status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.parametrize(
    "partial",
    [b"GET /v1/lookup?q=covid HTTP/1.1\r\nHost: x\r\n", b"POST /v1/lookup HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\n{\"q"],
    ids=["headers", "body"],
)
def test_a_partial_request_is_answered_408_and_closed(server, partial):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(partial)
        raw, waited = _read_all(sock, limit_s=10)
    status, body = _status_and_json(raw)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert waited < 5, f"held open {waited:.1f} s"


def test_a_kept_alive_connection_still_serves_whole_requests(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        for _ in range(2):
            sock.sendall(b"GET /v1/lookup?q=covid+vaccine HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.6)  # two requests 1.2 s apart on one connection: each has its own deadline
        sock.sendall(b"GET /v1/lookup?q=covid+vaccine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw, _ = _read_all(sock, limit_s=10)
    assert raw.count(b"HTTP/1.1 200") == 3


def test_a_1mb_get_gets_a_json_error(server):
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET /v1/lookup?q=" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        raw, _ = _read_all(sock, limit_s=10)
    status, body = _status_and_json(raw)
    assert 400 <= status < 500 and body["error"]["code"] in {"bad_request", "query_too_long"}
