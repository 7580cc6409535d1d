"""Renders a task's prompt for one key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bulkinfer.tasks.languages import language_name
from bulkinfer.tasks.spec import TaskSpec


def render_prompt(task: TaskSpec, key: str, fields: Mapping[str, Any] | None = None, language: str | None = None) -> str:
    """Returns the prompt for one key.

    The query is the normalised key, so every spelling of a query gets the same
    prompt and the same answer. Keys and column values are single-line (whitespace
    collapsed), so a query such as ``"x\\nsynonyms: y"`` cannot add lines to the
    prompt and pose as an example.

    Args:
        task: the task spec.
        key: the normalised key.
        fields: values of other columns the ``template.query`` reads.
        language: the row's language code; picks ``examples_by_language`` and
            ``instruction_by_language``, falling back to ``examples`` and ``instruction``.

    Returns:
        The prompt text.
    """
    shown = "".join(task.template.example.format(input=ex.input, output=ex.output) for ex in task.examples_for(language))
    values = {name: _one_line(value) for name, value in (fields or {}).items()} | _language_values(language)
    values["query"] = json.dumps(key, ensure_ascii=False) if task.template.quote_query else key
    prefix = task.template.prefix.format(instruction=_instruction(task, language), **_language_values(language))
    return prefix + shown + task.template.query.format(**values)


def render_messages(
    task: TaskSpec, key: str, fields: Mapping[str, Any] | None = None, language: str | None = None
) -> list[dict[str, str]]:
    """Returns the chat turns for one key (``format: chat`` tasks).

    The instruction is the system turn; every shown example is a user turn
    (``template.query`` rendered with the example's input) followed by an assistant
    turn (its output), so a chat model sees the answer format it should keep; the
    query is the last user turn. The model tokenizer's chat template turns these
    into the prompt (``models.vllm_handler``).

    Args:
        task: the task spec.
        key: the normalised key.
        fields: values of other columns the ``template.query`` reads.
        language: the row's language code (picks examples and instruction as in
            :func:`render_prompt`).

    Returns:
        ``[{"role": ..., "content": ...}, ...]`` in order.
    """
    values = {name: _one_line(value) for name, value in (fields or {}).items()} | _language_values(language)
    instruction = _instruction(task, language)
    messages = [{"role": "system", "content": instruction}] if instruction else []
    for ex in task.examples_for(language):
        blank = dict.fromkeys(fields or {}, "") | _language_values(language)
        messages.append({"role": "user", "content": task.template.query.format(**{**blank, "query": ex.input})})
        messages.append({"role": "assistant", "content": ex.output})
    values["query"] = json.dumps(key, ensure_ascii=False) if task.template.quote_query else key
    messages.append({"role": "user", "content": task.template.query.format(**values)})
    return messages


def _language_values(language: str | None) -> dict[str, str]:
    """``{language}`` and ``{language_name}`` of the templates: the prompt's (target) language."""
    return {"language": language or "", "language_name": language_name(language)}


def _instruction(task: TaskSpec, language: str | None) -> str:
    # str.replace, not str.format: instructions are prose and may hold literal braces.
    return task.instruction_for(language).strip().replace("{language_name}", language_name(language))


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())
