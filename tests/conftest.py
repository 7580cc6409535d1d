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
