"""A fine-tuning set from a published table: the teacher's answers as a student's training data.

    bulkinfer export-training --table tables/synonyms --out synonyms-sft.jsonl

Every row of a version whose quality gates passed becomes one training record
(prompt, answer), in one of the two layouts Hugging Face TRL's ``SFTTrainer``
reads (and most other SFT trainers):

``messages`` (conversational)::

    {"messages": [{"role": "system", "content": "<instruction>"},
                  {"role": "user", "content": "query: covid vaccine\\nsynonyms:"},
                  {"role": "assistant", "content": "covid shot, coronavirus vaccine"}],
     "metadata": {"key": "covid vaccine", "version": "...", "run_id": "...", ...}}

``prompt_completion`` (standard)::

    {"prompt": "<instruction>\\n\\nquery: covid vaccine\\nsynonyms:",
     "completion": " covid shot, coronavirus vaccine", "metadata": {...}}

The answer is rendered from the typed output column (so the parser's clean-ups
apply: no bullets, duplicates or the query itself) the way the task's examples
show it: list items joined with the task's first separator, or the label. The
completion starts with the whitespace the example template puts between the
prompt and ``{output}``, so ``prompt + completion`` reads like a shown example.

``format: chat`` tasks export the turns the chat model was sent (system, the
examples as user/assistant turns with ``--prompt task``, the query), and
``prompt_completion`` is then TRL's conversational form (lists of turns on both
sides). Tasks constrained to a JSON schema get the JSON answer.

Rows with an empty output and rows that copy a few-shot example or repeat the
query (:func:`bulkinfer.format.quality.is_echo`, the measure behind the echo gate) are
dropped and counted. Records come out sorted by key, so two exports diff
cleanly; rows are converted to Python a batch at a time.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from bulkinfer.errors import ConfigError, TableError
from bulkinfer.format import layout
from bulkinfer.format.quality import example_keys, is_echo
from bulkinfer.tasks.prompts import render_messages, render_prompt
from bulkinfer.tasks.spec import TaskSpec, load_task, task_from_dict

Format = Literal["messages", "prompt_completion"]
PromptStyle = Literal["zero_shot", "task"]
FORMATS: tuple[str, ...] = ("messages", "prompt_completion")
PROMPT_STYLES: tuple[str, ...] = ("zero_shot", "task")
FILE_TYPES: tuple[str, ...] = (".jsonl", ".parquet")

_METADATA = pa.struct(
    [
        pa.field("key", pa.string()),
        pa.field("query", pa.string()),
        pa.field("source_rows", pa.int64()),
        pa.field("version", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("task", pa.string()),
        pa.field("task_fingerprint", pa.string()),
        pa.field("adapter", pa.string()),
    ]
)
_MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
_COLUMNS = ["key", "query", "raw_output", "source_rows", "run_id", "model", "task", "task_fingerprint"]


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and what it left out."""

    table: str
    """The table directory."""
    version: str
    """The version exported."""
    out: str
    """The file written."""
    format: str
    """``messages`` or ``prompt_completion``."""
    prompt: str
    """``zero_shot`` (the task's prompt without examples) or ``task`` (exactly the task's prompt)."""
    task: str
    """Task name."""
    model: str
    """The teacher model that produced the version."""
    rows: int
    """Prediction rows in the version."""
    written: int
    """Training records written."""
    dropped: dict[str, int]
    """Rows left out, per reason: ``empty_output``, ``echo``."""
    seconds: float
    """Wall time of the export."""


def export_training(
    table: str,
    out: str,
    version: str | None = None,
    fmt: str = "messages",
    prompt: str = "zero_shot",
    task: str | None = None,
    metadata: bool = True,
    batch_rows: int = 8192,
) -> ExportResult:
    """Writes a version's (prompt, answer) pairs as a fine-tuning set.

    Args:
        table: the table directory.
        out: the file to write; ``.jsonl`` or ``.parquet`` (local, ``gs://``, ``s3://``).
            Written under a temporary name and renamed, so a failed export leaves no half file.
        version: the version to export; default: the published one. A version whose
            quality gates failed is refused.
        fmt: ``messages`` (system/user/assistant) or ``prompt_completion``.
        prompt: ``zero_shot`` renders the task's prompt without its examples (the
            student learns the task without them, and its prompts are cheaper);
            ``task`` renders exactly the prompt the teacher saw.
        task: a task name or spec path, only for versions whose manifest predates
            ``task_spec``; it must have the version's task fingerprint.
        metadata: add a ``metadata`` object (key, query, source_rows, version,
            run_id, model, task, task_fingerprint, adapter) to every record.
        batch_rows: rows converted to Python objects at a time.

    Returns:
        Counts of what was written and dropped.

    Raises:
        ConfigError: a bad format, prompt style or file type; no usable task spec.
        TableError: no such table or version, or the version failed its gates.
    """
    started = time.perf_counter()
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if prompt not in PROMPT_STYLES:
        raise ConfigError(f"--prompt must be one of {', '.join(PROMPT_STYLES)}, got {prompt!r}")
    if not out.endswith(FILE_TYPES):
        raise ConfigError(f"--out must end in {' or '.join(FILE_TYPES)} (the file type follows the extension), got {out!r}")
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be >= 1, got {batch_rows}")
    name, manifest = layout.resolve_version(table, version)
    gates = manifest.get("gates", {})
    if not gates.get("passed", False):
        failed = gates.get("failed") or []
        why = (
            ", ".join(f"{g['gate']} {g['value']} against threshold {g['threshold']}" for g in failed)
            if failed
            else "no gate result in its manifest"
        )
        raise TableError(
            f"version {name} of {table} did not pass its quality gates ({why}); only versions that passed are "
            f"training data: export the published one ({layout.read_current(table) or 'none'}) or one that passed"
        )
    spec = _task(manifest, name, task)
    if spec.template.fields():
        raise ConfigError(
            f"task {spec.name}'s template.query reads input columns {sorted(spec.template.fields())}, "
            "which prediction tables do not store; its prompts cannot be rebuilt from the table"
        )
    vdir = layout.version_dir(table, name)
    shards = layout.shard_paths(vdir, layout.PREDICTIONS)
    # Tables written before adapters existed (row schema 1) have no adapter column.
    has_adapter = bool(shards) and "adapter" in layout.parquet_schema(shards[0])[0].names
    rows = layout.read_shards(vdir, layout.PREDICTIONS, [*_COLUMNS, spec.output_column, *(["adapter"] if has_adapter else [])])
    records = _Records(spec, name, fmt, prompt, metadata)
    schema = records.schema()
    tmp = f"{out}.{uuid.uuid4().hex}.tmp"
    n_rows = rows.num_rows if rows is not None else 0
    try:
        with _Writer(tmp, schema, parquet=out.endswith(".parquet")) as write:
            for batch in _sorted_batches(rows, batch_rows):
                write(records.build(batch))
        FileSystems.rename([tmp], [out])
    except BaseException:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        raise
    return ExportResult(
        table=table,
        version=name,
        out=out,
        format=fmt,
        prompt=prompt,
        task=spec.name,
        model=str(manifest.get("model", "")),
        rows=n_rows,
        written=records.written,
        dropped=dict(records.dropped),
        seconds=round(time.perf_counter() - started, 3),
    )


def prompt_parts(task: TaskSpec, key: str) -> tuple[str, str]:
    """The prompt of a key split in two: the header (the rendered ``template.prefix``,
    i.e. the instruction) and the rest (shown examples and the query line).

    ``header + rest`` is exactly :func:`bulkinfer.tasks.prompts.render_prompt`'s prompt.
    """
    full = render_prompt(task, key)
    header = task.template.prefix.format(instruction=task.instruction.strip())
    return header, full[len(header) :]


def answer_text(task: TaskSpec, value: Any) -> str:
    """A typed output rendered the way the task's examples show answers.

    Lists: the items joined with the first separator (``a, b``). Labels: the label.
    Tasks constrained to a JSON schema: the JSON the schema asks for, the value under
    ``parser.json_field`` when the task names one.
    """
    if task.structured.json_schema is not None:
        field_name = task.parser.json_field
        return json.dumps({field_name: value} if field_name else value, ensure_ascii=False)
    if task.output == "label":
        return str(value or "")
    sep = task.parser.separators[0]
    joiner = sep if sep != sep.strip() else sep + " "
    return joiner.join(value or [])


def completion_lead(task: TaskSpec) -> str:
    """The whitespace the example template puts between the prompt and ``{output}``
    that the query template does not already end with (``" "`` for ``synonyms:``)."""
    before = task.template.example.split("{output}", 1)[0]
    lead = before[len(before.rstrip()) :]
    query = task.template.query
    return lead.removeprefix(query[len(query.rstrip()) :])


def _task(manifest: dict[str, Any], version: str, task: str | None) -> TaskSpec:
    if task is None:
        if "task_spec" not in manifest:
            raise ConfigError(
                f"the manifest of version {version} predates task_spec (written by newer runs); "
                f"pass --task with the task it ran ({manifest.get('task', 'unknown')}), as a name or spec path"
            )
        return task_from_dict(manifest["task_spec"], f"manifest.json of version {version}: task_spec")
    spec = load_task(task)
    expected = manifest.get("task_fingerprint")
    if spec.fingerprint() != expected:
        raise ConfigError(
            f"--task {task} is not the spec version {version} was generated with (task fingerprint {spec.fingerprint()}, "
            f"the version's {expected}); its prompts would differ from the teacher's. Pass the spec file the run used"
        )
    return spec


def _sorted_batches(rows: pa.Table | None, batch_rows: int) -> Iterator[dict[str, list[Any]]]:
    # The Arrow columns are held once; only one batch at a time becomes Python objects.
    if rows is None or rows.num_rows == 0:
        return
    order = pc.sort_indices(rows, sort_keys=[("key", "ascending")])
    for start in range(0, rows.num_rows, batch_rows):
        yield rows.take(order.slice(start, batch_rows)).to_pydict()


class _Records:
    """Turns batches of prediction rows into training records, counting what it drops."""

    def __init__(self, task: TaskSpec, version: str, fmt: str, prompt: str, metadata: bool):
        self._task = task
        self._prompt_task = dataclasses.replace(task, shots=0) if prompt == "zero_shot" else task
        self._version = version
        self._fmt = fmt
        self._metadata = metadata
        # Echoes are judged against the examples the teacher was shown, whatever the export's prompt.
        self._examples = example_keys(task)
        self._lead = completion_lead(task)
        self.written = 0
        self.dropped = {"empty_output": 0, "echo": 0}

    def schema(self) -> pa.Schema:
        if self._fmt == "messages":
            fields = [pa.field("messages", pa.list_(_MESSAGE))]
        elif self._task.format == "chat":
            # TRL's conversational prompt-completion: both sides are lists of turns.
            fields = [pa.field("prompt", pa.list_(_MESSAGE)), pa.field("completion", pa.list_(_MESSAGE))]
        else:
            fields = [pa.field("prompt", pa.string()), pa.field("completion", pa.string())]
        return pa.schema(fields + ([pa.field("metadata", _METADATA)] if self._metadata else []))

    def build(self, batch: dict[str, list[Any]]) -> list[dict[str, Any]]:
        out = []
        task = self._task
        for i, key in enumerate(batch["key"]):
            value = batch[task.output_column][i]
            if not value:
                self.dropped["empty_output"] += 1
                continue
            if is_echo(task, batch["raw_output"][i] or "", key, self._examples):
                self.dropped["echo"] += 1
                continue
            answer = answer_text(task, value)
            reply = {"role": "assistant", "content": answer}
            record: dict[str, Any]
            if task.format == "chat":
                # The turns the chat model was sent (the examples as earlier turns with --prompt task).
                turns = render_messages(self._prompt_task, key)
                record = {"messages": [*turns, reply]} if self._fmt == "messages" else {"prompt": turns, "completion": [reply]}
            else:
                header, rest = prompt_parts(self._prompt_task, key)
                if self._fmt == "messages":
                    turns = [{"role": "system", "content": header.strip()}] if header.strip() else []
                    record = {"messages": [*turns, {"role": "user", "content": rest.strip()}, reply]}
                else:
                    record = {"prompt": header + rest, "completion": self._lead + answer}
            if self._metadata:
                record["metadata"] = {
                    "key": key,
                    "query": batch["query"][i],
                    "source_rows": batch["source_rows"][i],
                    "version": self._version,
                    "run_id": batch["run_id"][i],
                    "model": batch["model"][i],
                    "task": batch["task"][i],
                    "task_fingerprint": batch["task_fingerprint"][i],
                    "adapter": batch["adapter"][i] if "adapter" in batch else "",
                }
            out.append(record)
        self.written += len(out)
        return out


class _Writer:
    """A context manager giving a ``write(records)`` function for a JSONL or Parquet file."""

    def __init__(self, path: str, schema: pa.Schema, parquet: bool):
        self._path = path
        self._schema = schema
        self._parquet = parquet
        self._stream: Any = None
        self._pq: pq.ParquetWriter | None = None

    def __enter__(self) -> Any:
        self._stream = FileSystems.create(self._path, compression_type=CompressionTypes.UNCOMPRESSED)
        if self._parquet:
            self._pq = pq.ParquetWriter(self._stream, self._schema)
            return self._write_parquet
        return self._write_jsonl

    def _write_parquet(self, records: list[dict[str, Any]]) -> None:
        if records and self._pq is not None:
            self._pq.write_table(pa.Table.from_pylist(records, schema=self._schema))

    def _write_jsonl(self, records: list[dict[str, Any]]) -> None:
        if records:
            self._stream.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))

    def __exit__(self, *exc: object) -> None:
        if self._pq is not None:
            self._pq.close()
        self._stream.close()
