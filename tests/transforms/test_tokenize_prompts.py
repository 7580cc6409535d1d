"""TokenizePrompts attaches the ids the model handler would compute itself (tiny local tokenizer)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from bulkinfer.format.records import PromptRequest
from bulkinfer.models.vllm_handler import tokenize_requests
from bulkinfer.tasks.prompts import render_messages, render_prompt
from bulkinfer.tasks.spec import load_task
from bulkinfer.transforms.tokenize_prompts import TokenizePrompts


def test_token_ids_match_the_handlers_own_tokenisation_for_text_and_chat(tiny_model):
    from transformers import AutoTokenizer

    task = load_task("synonyms")
    requests = [PromptRequest(key=k, query=k, prompt=render_prompt(task, k), source_rows=1) for k in ("covid vaccine", "used cars")]
    turns = tuple((m["role"], m["content"]) for m in render_messages(task, "plum"))
    requests.append(PromptRequest(key="plum", query="plum", prompt="", source_rows=1, messages=turns))
    ids = tokenize_requests(AutoTokenizer.from_pretrained(tiny_model), requests)
    expected = {r.key: tuple(row) for r, row in zip(requests, ids, strict=True)}
    assert all(expected.values())
    with TestPipeline() as p:
        tokenized = p | beam.Create([requests]) | TokenizePrompts(str(tiny_model), batch_size=2)
        out = tokenized | beam.FlatMap(lambda batch: [(r.key, r.prompt_token_ids) for r in batch])
        assert_that(out, equal_to(list(expected.items())))
