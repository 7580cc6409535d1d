"""Several sampled answers per prompt (``sampling.n`` > 1) on a real engine (tiny local model, CPU)."""

from __future__ import annotations

import dataclasses

import pytest

from bulkinfer.format.records import PromptRequest
from bulkinfer.keys import normalize_key
from bulkinfer.models.vllm_handler import VLLMHandler
from bulkinfer.tasks.parsing import parse_output
from bulkinfer.tasks.prompts import render_prompt
from bulkinfer.tasks.spec import load_task

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("shared_engines")]

TASK = load_task("synonyms_worldwide")


def test_n_sampled_answers_per_prompt_come_back_together_and_reproducibly(lora_engine_config):
    # The LoRA-capable engine the handler tests share runs the base model here: no extra engine start.
    sampling = dataclasses.replace(TASK.sampling, n=3, max_tokens=12)
    handler = VLLMHandler(lora_engine_config, sampling, batch_size=8)
    engine = handler.load_model().get()
    # Prompts long enough to be scheduled over several steps, each with its seeded generators.
    batch = [
        PromptRequest(key=key, query=key, prompt=render_prompt(TASK, key, language=language), source_rows=1, language=language)
        for key in ("covid vaccine", "cheap flights")
        for language in ("de", "ja", "sw")
    ]
    first = handler.generate(batch, engine)
    again = handler.generate(batch, engine)
    assert [(g.request.key, g.request.language) for g in first] == [(r.key, r.language) for r in batch]
    assert first and all(g.error_reason is None and len(g.texts) == 3 and g.text == g.texts[0] for g in first)
    assert all(g.output_tokens >= len(g.texts) for g in first)  # the tokens of all three answers
    # Sampled, yet reproducible: the seed fixes every answer.
    assert [g.texts for g in first] == [g.texts for g in again]
    # The answers differ (random tiny weights at temperature 0.9), and the parser unions their items.
    assert any(len(set(g.texts)) > 1 for g in first)
    for g in first:
        union = parse_output(TASK, "\n".join(g.texts), g.request.key).value
        expected: dict[str, str] = {}
        for text in g.texts:
            for item in parse_output(TASK, text, g.request.key).value or []:
                expected.setdefault(normalize_key(item), item)
        assert union == list(expected.values())[: TASK.parser.max_items]
