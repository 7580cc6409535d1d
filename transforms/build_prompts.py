"""BuildPrompts: one prompt per key, rendered from the task spec."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from bulkinfer.format.records import PromptRequest, QueryGroup, query_groups
from bulkinfer.tasks.prompts import PromptRenderer, render_messages
from bulkinfer.tasks.spec import TaskSpec
from bulkinfer.transforms.engine_batch import EngineBatch


class BuildPrompts(beam.PTransform):
    """Renders the task's prompt for every key of the key-group tables, with the examples of its language.

    Each table becomes one list of :class:`PromptRequest` (``Generate`` cuts the lists
    into engine batches). ``completion`` tasks get the prompt text; ``chat`` tasks get chat turns, which
    the model handler renders with the model tokenizer's chat template.
    """

    def __init__(self, task: TaskSpec):
        """Args:
        task: the task spec whose template, instruction and examples are rendered.
        """
        super().__init__()
        self._task = task

    def expand(self, groups: beam.PCollection) -> beam.PCollection:
        return groups | "Render" >> beam.Map(prompt_requests, self._task).with_output_types(EngineBatch)


def prompt_requests(groups: pa.Table, task: TaskSpec) -> EngineBatch:
    """The engine requests of a key-group table, in its row order."""
    renderer = PromptRenderer(task)
    return EngineBatch(prompt_request(group, task, renderer) for group in query_groups(groups))


def prompt_request(group: QueryGroup, task: TaskSpec, renderer: PromptRenderer | None = None) -> PromptRequest:
    """The engine request of one key: its prompt text, or chat turns for ``chat`` tasks.

    Args:
        group: the key.
        task: the task spec.
        renderer: the task's renderer, when rendering many keys (it works out the instruction and examples once).
    """
    if task.format == "chat":
        messages = render_messages(task, group.key, dict(group.fields), group.language)
        return PromptRequest(
            key=group.key,
            query=group.query,
            prompt="\n".join(f"<{m['role']}> {m['content']}" for m in messages),
            source_rows=group.source_rows,
            fields=group.fields,
            messages=tuple((m["role"], m["content"]) for m in messages),
            language=group.language,
        )
    return PromptRequest(
        key=group.key,
        query=group.query,
        prompt=(renderer or PromptRenderer(task)).prompt(group.key, dict(group.fields), group.language),
        source_rows=group.source_rows,
        fields=group.fields,
        language=group.language,
    )
