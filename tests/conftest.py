"""Shared fixtures: a tiny real model for the engine path, a fake handler for logic, corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# vLLM CPU sizes its KV cache from this (GiB); set before any engine starts.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama directory with a local BPE tokenizer."""
    from models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_loras(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA adapters (PEFT format) for the tiny model, with different seeded random weights."""
    from models.tiny import build_tiny_lora

    root = tmp_path_factory.mktemp("tiny-loras")
    return [build_tiny_lora(tiny_model, root / f"lora{seed}", seed=seed) for seed in (1, 2)]


def write_corpus(path: Path, queries: list, **columns: list) -> Path:
    """Writes a Parquet corpus with a ``query`` column (and others) to ``path``."""
    table = pa.table({"query": pa.array(queries, pa.string()), **columns})
    pq.write_table(table, path)
    return path


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real ``redis-server`` on a free loopback port, no persistence; stopped after the session."""
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (make install installs it: apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port} (exit {server.poll()})")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


def write_version(table: Path, version: str, answers: dict[str, list[str]], *, publish: bool = True, store: bool = True) -> Path:
    """Writes one complete version of a synonyms table without running the job; returns its directory.

    Rows carry every prediction column with fixed provenance (``run_id`` is the
    version); ``store`` also builds its ``store.sqlite`` the way the job does.
    """
    from bulkinfer import layout
    from bulkinfer import store as stores

    vdir = table / "versions" / version
    vdir.mkdir(parents=True)
    keys = sorted(answers)
    n = len(keys)
    rows = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "query": pa.array(keys, pa.string()),
            "synonyms": pa.array([answers[k] for k in keys], pa.list_(pa.string())),
            "raw_output": pa.array([", ".join(answers[k]) for k in keys], pa.string()),
            "source_rows": pa.array([1] * n, pa.int64()),
            "model": ["fake-model"] * n,
            "model_digest": ["digest"] * n,
            "task": ["synonyms"] * n,
            "task_fingerprint": ["tf"] * n,
            "fingerprint": ["fp"] * n,
            "engine": ["none"] * n,
            "run_id": [version] * n,
        }
    )
    pq.write_table(rows, vdir / "predictions-00000-of-00001.parquet")
    manifest = {"version": version, "output_column": "synonyms", "output_kind": "list", "run_id": version, "counts": {"keys": n}}
    layout.write_manifest(str(vdir), manifest)
    if store:
        stores.write_store(str(table), version)
    if publish:
        layout.publish(str(table), version)
    return vdir
