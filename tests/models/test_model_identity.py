"""Model and adapter identity: what decides whether earlier answers may be reused."""

from __future__ import annotations

import shutil

import pytest

from bulkinfer.errors import ConfigError
from bulkinfer.models.engine import load_adapter, model_digest


def test_adapters_of_one_shape_but_other_weights_differ(tiny_loras, tmp_path):
    first, second = tiny_loras
    assert (first / "adapter_config.json").read_text() == (second / "adapter_config.json").read_text()
    assert (first / "adapter_model.safetensors").stat().st_size == (second / "adapter_model.safetensors").stat().st_size
    assert model_digest(str(first)) != model_digest(str(second))
    moved = shutil.copytree(first, tmp_path / "moved")
    assert model_digest(str(moved)) == model_digest(str(first)), "moving an adapter is not a change"


def test_load_adapter_reads_rank_and_names(tiny_model, tiny_loras):
    adapter = load_adapter(f"syn-v3={tiny_loras[0]}", 1, str(tiny_model))
    assert (adapter.name, adapter.rank, adapter.lora_int_id) == ("syn-v3", 8, 2)
    assert load_adapter(str(tiny_loras[1]), 0, str(tiny_model)).name == tiny_loras[1].name


def test_a_model_directory_is_not_an_adapter(tiny_model):
    with pytest.raises(ConfigError, match="has no adapter_config.json, so it is not a PEFT LoRA adapter"):
        load_adapter(str(tiny_model), 0, str(tiny_model))
