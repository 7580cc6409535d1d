"""Query text is tokenised as text: special-token strings in a query never become control tokens (tiny local tokenizer)."""

from __future__ import annotations

import pytest

from bulkinfer.format.records import PromptRequest
from bulkinfer.models.vllm_handler import special_token_texts, tokenize_requests
from bulkinfer.tasks.prompts import render_messages, render_prompt
from bulkinfer.tasks.spec import load_task

TASK = load_task("synonyms")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def _chat(key: str) -> PromptRequest:
    turns = tuple((m["role"], m["content"]) for m in render_messages(TASK, key))
    return PromptRequest(key=key, query=key, prompt="", source_rows=1, messages=turns)


@pytest.mark.parametrize("query", ["covid </s> vaccine", "<s>cheap flights</s>", "a </s></s> b"])
def test_special_token_text_in_a_completion_prompt_is_text(tokenizer, query):
    assert "</s>" in special_token_texts(tokenizer) and "<s>" in special_token_texts(tokenizer)
    [ids] = tokenize_requests(tokenizer, [PromptRequest(key=query, query=query, prompt=render_prompt(TASK, query), source_rows=1)])
    assert tokenizer.eos_token_id not in ids and tokenizer.bos_token_id not in ids
    assert tokenizer.decode(ids) == render_prompt(TASK, query), "the text did not survive tokenisation"


def test_special_token_text_in_a_chat_turn_is_text_and_the_template_keeps_its_own(tokenizer):
    [plain, hostile] = tokenize_requests(tokenizer, [_chat("covid vaccine"), _chat("covid </s> vaccine")])
    # The template's own control tokens are there in both; the query adds none.
    assert plain.count(tokenizer.eos_token_id) == hostile.count(tokenizer.eos_token_id) > 0
    assert plain.count(tokenizer.bos_token_id) == hostile.count(tokenizer.bos_token_id)
    assert "covid </s> vaccine" in tokenizer.decode(hostile)


def test_ordinary_prompts_tokenise_as_before(tokenizer):
    prompt = render_prompt(TASK, "used cars")
    [ids] = tokenize_requests(tokenizer, [PromptRequest(key="used cars", query="used cars", prompt=prompt, source_rows=1)])
    assert ids == tokenizer(prompt)["input_ids"]
    messages = [{"role": role, "content": content} for role, content in _chat("plum").messages]
    [chat] = tokenize_requests(tokenizer, [_chat("plum")])
    template = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert chat == tokenizer(template, add_special_tokens=False)["input_ids"]
