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
    from bulkinfer.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_loras(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA adapters (PEFT format) for the tiny model, with different seeded random weights."""
    from bulkinfer.models.tiny import build_tiny_lora

    root = tmp_path_factory.mktemp("tiny-loras")
    return [build_tiny_lora(tiny_model, root / f"lora{seed}", seed=seed) for seed in (1, 2)]


def write_corpus(path: Path, queries: list, **columns: list) -> Path:
    """Writes a Parquet corpus with a ``query`` column (and others) to ``path``."""
    table = pa.table({"query": pa.array(queries, pa.string()), **columns})
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real ``redis-server`` on a free loopback port, no persistence; stopped after the session.

    Skipped where it is not installed, except under CI (``BULKINFER_REQUIRE_REDIS=1``,
    set by ``.ci/run``), where a missing server is a failure, not a quiet skip.
    """
    from bulkinfer.testing import redis_server

    try:
        with redis_server(tmp_path_factory.mktemp("redis")) as url:
            yield url
    except FileNotFoundError as e:
        if os.environ.get("BULKINFER_REQUIRE_REDIS") == "1":
            pytest.fail(f"{e}; BULKINFER_REQUIRE_REDIS=1 forbids skipping the Redis tests")
        pytest.skip(str(e))


def write_version(table: Path, version: str, answers: dict[str, list[str]], *, publish: bool = True, store: bool = True) -> Path:
    """Writes one complete version of a synonyms table without running the job; returns its directory.

    Rows carry every prediction column with fixed provenance (``run_id`` is the
    version); ``store`` also builds its ``store.sqlite`` and match index the way the job does.
    """
    from bulkinfer.format import layout
    from bulkinfer.lookup import store as stores

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
        from bulkinfer.lookup.match import write_match_index

        stores.write_store(str(table), version)
        write_match_index(str(table), version)
    if publish:
        layout.publish(str(table), version)
    return vdir
