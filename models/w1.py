"""Workload W1 of the throughput issue: a random-weight model with Qwen2.5-0.5B's shape, built locally (no hub).

The tokenizer is a byte-level BPE (the kind Qwen2's tokenizer class loads) trained on the
workload's words, its vocabulary padded with filler tokens to the model's 151,936 ids, so any
id the random model samples decodes to text (detokenisation costs what it would on a real model).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

QWEN25_05B = {
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
}
"""The shape of Qwen2.5-0.5B (W1 keeps it fixed)."""


def build_w1_model(
    target: Path,
    words: Iterable[str],
    *,
    num_hidden_layers: int | None = None,
    max_position_embeddings: int = 2048,
    dtype: str = "bfloat16",
    seed: int = 0,
) -> Path:
    """Writes a Qwen2-shaped random-weight model directory (config, safetensors, tokenizer) to ``target``.

    Args:
        target: the directory to write.
        words: words the workload's prompts use; each gets its own token.
        num_hidden_layers: None for W1's 24; fewer builds a cheaper model of the same
            width (tests prove the code path on CPU with 1).
        max_position_embeddings: context length.
        dtype: the weights' dtype (W1: bfloat16).
        seed: torch seed, so the same directory content every time.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    target.mkdir(parents=True, exist_ok=True)
    shape = dict(QWEN25_05B)
    if num_hidden_layers is not None:
        shape["num_hidden_layers"] = num_hidden_layers
    tokenizer = _padded_byte_level_bpe(list(words), shape["vocab_size"])
    tokenizer.save_pretrained(target)

    torch.manual_seed(seed)
    config = Qwen2Config(
        **shape,
        max_position_embeddings=max_position_embeddings,
        max_window_layers=shape["num_hidden_layers"],
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        rope_theta=1_000_000.0,
    )
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(target, safe_serialization=True)
    return target


def _padded_byte_level_bpe(words: list[str], vocab_size: int):
    """A byte-level BPE trained on ``words``, its vocabulary padded to ``vocab_size`` with unreachable filler tokens."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([" ".join(words)] * 4, trainer)
    spec = json.loads(bpe.to_str())
    vocab = spec["model"]["vocab"]
    filler = 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f"ĠX{filler}", len(vocab))
        filler += 1
    padded = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=padded, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
