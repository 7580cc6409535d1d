"""Model variants on a real engine (tiny local model, CPU): LoRA adapters, structured output, chat format.

One engine with LoRA support serves the whole module: requests without an adapter
run the base model on it.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from bulkinfer.format.records import PromptRequest
from bulkinfer.models.engine import load_adapter
from bulkinfer.models.vllm_handler import VLLMHandler, release_shared_engine
from bulkinfer.tasks.parsing import parse_output
from bulkinfer.tasks.prompts import render_messages, render_prompt
from bulkinfer.tasks.spec import ParserSpec, SamplingSpec, StructuredSpec, TaskSpec, load_task

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("shared_engines")]

SYNONYMS = load_task("synonyms")
CLASSIFY = load_task("classify")
KEYS = ["covid vaccine", "cheap flights", "used cars", "vuelos baratos", "中古車", "кроссовки", "a", "plum"]
SHARED = "test_model_variants"


@pytest.fixture(scope="module")
def setup(tiny_model, tiny_loras, lora_engine_config):
    adapters = [load_adapter(f"lora{i}={path}", i, str(tiny_model)) for i, path in enumerate(tiny_loras)]
    base = VLLMHandler(lora_engine_config, SYNONYMS.sampling, batch_size=16, share_engine_as=SHARED)
    engine = base.load_model().get()
    yield lora_engine_config, adapters, base, engine
    release_shared_engine(SHARED)


def _handler(config, task: TaskSpec, **kwargs) -> VLLMHandler:
    return VLLMHandler(
        config, task.sampling, batch_size=16, structured=task.structured, labels=task.labels, share_engine_as=SHARED, **kwargs
    )


def _requests(task: TaskSpec, keys=KEYS) -> list[PromptRequest]:
    if task.format == "chat":
        return [
            PromptRequest(
                key=k, query=k, prompt="", source_rows=1, messages=tuple((m["role"], m["content"]) for m in render_messages(task, k))
            )
            for k in keys
        ]
    return [PromptRequest(key=k, query=k, prompt=render_prompt(task, k), source_rows=1) for k in keys]


def test_lora_adapter_changes_outputs_deterministically(setup):
    config, adapters, base, engine = setup
    requests = _requests(SYNONYMS)
    plain = [g.text for g in base.generate(requests, engine)]
    tuned = _handler(config, SYNONYMS, adapter=adapters[0])
    first = [g.text for g in tuned.generate(requests, engine)]
    again = [g.text for g in tuned.generate(list(reversed(requests)), engine)]
    other = [g.text for g in _handler(config, SYNONYMS, adapter=adapters[1]).generate(requests, engine)]
    assert plain and all(first)
    assert first == list(reversed(again)), "temperature 0 with an adapter must be deterministic"
    assert sum(a != b for a, b in zip(first, plain, strict=True)) >= len(KEYS) - 1, "the adapter must change the answers"
    assert first != other, "two adapters, two sets of answers"
    # The shared engine was reused: the handler with the adapter started nothing.
    assert tuned.load_model().get() is engine


JSON_TASK = dataclasses.replace(
    SYNONYMS,
    instruction="List synonyms as JSON.",
    examples=(),
    shots=-1,
    sampling=SamplingSpec(max_tokens=200, stop=("\n",)),
    structured=StructuredSpec(
        json_schema=json.dumps(
            {
                "type": "object",
                "properties": {"synonyms": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 1, "maxItems": 3}},
                "required": ["synonyms"],
            }
        )
    ),
    parser=ParserSpec(json_field="synonyms"),
)


COT = load_task("classify_cot")
COT_SHORT = dataclasses.replace(
    COT,
    shots=1,
    structured=StructuredSpec(regex=COT.structured.regex.replace("{1,240}", "{1,60}")),
    sampling=SamplingSpec(max_tokens=96, stop=("\n\n",)),
)


@pytest.mark.parametrize(
    "task",
    [JSON_TASK, dataclasses.replace(CLASSIFY, structured=StructuredSpec(choice=True)), COT_SHORT],
    ids=["json", "choice", "chain-of-thought-regex"],
)
def test_structured_output_always_parses(setup, task):
    config, _, _, engine = setup
    generations = _handler(config, task).generate(_requests(task), engine)
    assert len(generations) == len(KEYS)
    for g in generations:
        parsed = parse_output(task, g.text, g.request.key)
        assert parsed.error is None, f"{g.text!r}: {parsed.error}"
        if task.output == "label":
            assert parsed.value in task.labels
        else:
            assert isinstance(parsed.value, list) and json.loads(g.text, strict=False)["synonyms"]


def test_unconstrained_random_model_output_does_not_parse_as_json(setup):
    """The control: without the constraint the same prompts do not give JSON, so the test above proves the constraint."""
    config, _, _, engine = setup
    task = dataclasses.replace(JSON_TASK, structured=StructuredSpec(json_schema=JSON_TASK.structured.json_schema))
    free = dataclasses.replace(task, structured=StructuredSpec(), parser=ParserSpec())
    texts = [g.text for g in _handler(config, free).generate(_requests(task), engine)]
    assert texts and all(parse_output(task, t, "k").error for t in texts)


def test_chat_format_renders_through_the_tokenizers_chat_template(setup):
    config, _, base, engine = setup
    chat = dataclasses.replace(SYNONYMS, format="chat")
    requests = _requests(chat, KEYS[:3])
    generations = _handler(config, chat).generate(requests, engine)
    messages = render_messages(chat, KEYS[0])
    expected = engine.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert generations[0].prompt_tokens == len(expected)
    text = engine.tokenizer.decode(expected)
    assert text.startswith("<s><|system|> For each search query") and text.endswith(
        "<|user|> query: covid vaccine\nsynonyms:</s><|assistant|>"
    )
    assert text.count("<|assistant|>") == len(chat.shown_examples) + 1
    assert all(g.error_reason is None and g.output_tokens > 0 for g in generations)
