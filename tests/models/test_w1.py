"""The W1 model builder (Qwen2.5-0.5B's shape) on CPU, cut to one layer so it builds in seconds."""

from __future__ import annotations

import json

from bulkinfer.models.w1 import QWEN25_05B, build_w1_model


def test_w1_model_has_qwen_shape_and_a_tokenizer_that_decodes_every_id(tmp_path):
    from transformers import AutoTokenizer

    model = build_w1_model(tmp_path / "w1", ["query", "synonyms", "kalo", "mine"], num_hidden_layers=1)
    config = json.loads((model / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_hidden_layers"] == 1 and config["dtype"] == "bfloat16"
    for name in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings"):
        assert config[name] == QWEN25_05B[name], name
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert len(tokenizer) == QWEN25_05B["vocab_size"]
    text = "query: kalo mine\nsynonyms:"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.decode([QWEN25_05B["vocab_size"] - 1]).strip(), "a filler id decodes to text"
