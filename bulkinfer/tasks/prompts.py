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
    return PromptRenderer(task).prompt(key, fields, language)


class PromptRenderer:
    """Renders one task's prompts, working out the part before the query (instruction and examples) once per language.

    :func:`render_prompt` for many keys: the job renders every key's prompt with one.
    """

    def __init__(self, task: TaskSpec):
        """Args:
        task: the task spec.
        """
        self._task = task
        self._heads: dict[str | None, tuple[str, dict[str, str]]] = {}

    def prompt(self, key: str, fields: Mapping[str, Any] | None = None, language: str | None = None) -> str:
        """:func:`render_prompt` of this renderer's task."""
        task = self._task
        if language not in self._heads:
            names = _language_values(language)
            shown = "".join(task.template.example.format(input=ex.input, output=ex.output) for ex in task.examples_for(language))
            self._heads[language] = task.template.prefix.format(instruction=_instruction(task, language), **names) + shown, names
        head, names = self._heads[language]
        values = {name: _one_line(value) for name, value in fields.items()} if fields else {}
        values |= names
        values["query"] = json.dumps(key, ensure_ascii=False) if task.template.quote_query else key
        return head + task.template.query.format(**values)


def render_messages(task: TaskSpec, key: str, fields: Mapping[str, Any] | None = None, language: str | None = None) -> list[dict[str, str]]:
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
