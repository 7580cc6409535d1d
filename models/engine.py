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
from bulkinfer.models.gemma import GEMMA_ALIAS, ensure_gemma_dir


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
    engines_per_gpu: int = 1
    """Engine processes sharing one GPU (short-output jobs are bound by each engine's
    host-side work, not by the GPU). Each takes ``kv_cache_gib`` of KV cache, set as a
    fixed byte budget so engines starting together do not trip each other's memory
    profiling, and ``gpu_memory_utilization / engines_per_gpu`` of the GPU."""
    seed: int = 0
    """Engine seed."""
    enforce_eager: bool | None = None
    """Skip torch.compile and CUDA graphs: faster start, slower steps. None: eager on
    CPU (compiling Gemma 270M took 200 s there), compiled on GPU."""
    max_lora_rank: int | None = None
    """Largest LoRA rank among the run's adapters; None starts the engine without LoRA support."""
    max_loras: int = 1
    """LoRA adapters the engine holds at once."""

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
        if not 1 <= self.engines_per_gpu <= 16:
            raise ConfigError(f"engines_per_gpu must be in [1, 16], got {self.engines_per_gpu}")
        if self.engines_per_gpu > 1 and self.tensor_parallel_size > 1:
            raise ConfigError(
                f"engines_per_gpu > 1 shares one GPU between engines; it needs tensor_parallel_size 1, got {self.tensor_parallel_size}"
            )
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.max_lora_rank is not None and not 1 <= self.max_lora_rank <= 512:
            raise ConfigError(f"max_lora_rank must be in [1, 512], got {self.max_lora_rank}")
        if self.max_loras < 1:
            raise ConfigError(f"max_loras must be >= 1, got {self.max_loras}")

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
            # JSON-constrained tasks get compact JSON: no line breaks for a "\n" stop
            # string to cut, fewer tokens. (An engine-wide setting in vLLM.)
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.max_lora_rank is not None:
            kwargs.update(enable_lora=True, max_lora_rank=_lora_rank_slot(self.max_lora_rank), max_loras=self.max_loras)
        if on_cpu:
            # vLLM CPU sizes its KV cache from VLLM_CPU_KVCACHE_SPACE (set by the
            # handler before load); this fraction then only bounds host memory.
            kwargs["gpu_memory_utilization"] = 0.3
            if self.tensor_parallel_size == 1:
                # One CPU engine runs in the calling process (the handler turns vLLM's engine-core process
                # off with it): no engine-core and worker processes that each import torch again. Measured
                # with the tiny model: start 23.2 s -> 6.3 s, 64 prompts 0.33 s -> 0.12 s.
                kwargs["distributed_executor_backend"] = "uni"
        else:
            # A fixed KV budget rather than a share of free memory, so several
            # engines on one GPU do not trip each other's memory profiling.
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization / self.engines_per_gpu
            kwargs["kv_cache_memory_bytes"] = int(self.kv_cache_gib * 2**30)
        return kwargs


# vLLM allocates LoRA slots of these ranks; an adapter of rank r needs a slot >= r.
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _lora_rank_slot(rank: int) -> int:
    return next(r for r in _LORA_RANKS if r >= rank)


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter (PEFT format) applied to the base model."""

    name: str
    """Name in provenance and, with several adapters, the table's subdirectory."""
    path: str
    """The adapter directory (``adapter_config.json`` and weights)."""
    rank: int
    """LoRA rank ``r`` from its config."""
    lora_int_id: int
    """vLLM's numeric id for the adapter, unique within a run (from 1)."""
    digest: str
    """Digest of its config and weight files (``model_digest``)."""


def load_adapter(spec: str, index: int, base_model: str) -> Adapter:
    """Reads ``--adapter PATH`` or ``--adapter NAME=PATH`` and checks the adapter directory.

    Args:
        spec: the flag value.
        index: position among the run's adapters (for vLLM's numeric id).
        base_model: the resolved base model, to warn when the adapter was trained on another.

    Raises:
        ConfigError: no such directory, not a PEFT LoRA adapter, or a bad name.
    """
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    directory = Path(path).expanduser()
    if not name:
        name = directory.name
    if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise ConfigError(f"--adapter {spec}: the name must be letters, digits, '.', '-' or '_'; write --adapter NAME=PATH")
    config_file = directory / "adapter_config.json"
    if not config_file.is_file():
        raise ConfigError(f"--adapter {spec}: {directory} has no adapter_config.json, so it is not a PEFT LoRA adapter directory")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"--adapter {spec}: {config_file} is not valid JSON: {e}") from e
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise ConfigError(f"--adapter {spec}: peft_type is {config.get('peft_type')!r}; only LoRA adapters run on vLLM")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"--adapter {spec}: adapter_config.json has no positive integer rank 'r' (got {rank!r})")
    if not any(directory.glob("adapter_model.*")):
        raise ConfigError(f"--adapter {spec}: {directory} has no adapter_model.safetensors (or .bin) weights")
    return Adapter(name=name, path=str(directory.resolve()), rank=rank, lora_int_id=index + 1, digest=model_digest(str(directory)))


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
        _check_no_custom_code(model, path / "config.json")
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


def _check_no_custom_code(model: str, config_file: Path) -> None:
    """A model whose type needs its own Python code (``auto_map``) would fail minutes into the engine start."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ConfigError(f"--model {model}: {config_file} does not read as JSON ({e})") from e
    if isinstance(config, dict) and config.get("auto_map"):
        raise ConfigError(
            f"--model {model}: its config.json maps the model to its own code (auto_map: {sorted(config['auto_map'])}); "
            f"bulkinfer never runs code shipped with a model: use a model of an architecture vLLM supports"
        )


# Files up to this size are hashed whole; larger ones (weight shards) by samples.
_WHOLE_FILE_BYTES = 64 * 2**20
_SAMPLE_BYTES = 2**20


def model_digest(resolved: str) -> str:
    """A digest of a model's (or a LoRA adapter's) identity, from the files in its directory.

    Small files (config, tokenizer, chat template, adapter weights) are hashed whole.
    Weight shards larger than 64 MiB are hashed by size and three 1 MiB samples
    (start, middle, end): reading every byte of a multi-GB model would cost minutes
    each run, and a fine-tune rewrites every tensor, so the samples change with it.
    File sizes alone would not do: a fine-tune of the same shape has the same sizes
    (measured: two LoRA adapters of one config gave the same size-based digest).
    A hub id hashes to its name.
    """
    digest = hashlib.sha256()
    path = Path(resolved)
    if not path.is_dir():
        digest.update(resolved.encode())
        return digest.hexdigest()[:16]
    for item in sorted(path.iterdir()):
        if not item.is_file() or item.name == "README.md":
            continue
        digest.update(item.name.encode())
        size = item.stat().st_size
        digest.update(str(size).encode())
        with item.open("rb") as f:
            if size <= _WHOLE_FILE_BYTES:
                digest.update(f.read())
                continue
            for offset in (0, size // 2, size - _SAMPLE_BYTES):
                f.seek(offset)
                digest.update(f.read(_SAMPLE_BYTES))
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
