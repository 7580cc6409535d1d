"""Quality measures of a new version, and the gates that keep a bad one from being published."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from bulkinfer.errors import Reason
from bulkinfer.keys import normalize_key
from bulkinfer.tasks.parsing import answer_text, parse_output, split_items
from bulkinfer.tasks.spec import TaskSpec

_NO_LIMIT = 10**9

FAILURE_REASONS = (Reason.GENERATION_FAILED, Reason.UNPARSEABLE_OUTPUT, Reason.PROMPT_TOO_LONG)
"""Dead-letter reasons that count against ``gates.max_failed_rate``: keys the job should have answered."""


def example_keys(task: TaskSpec) -> frozenset[str]:
    """Normalised inputs of the shown examples (every language's) and the items of their outputs."""
    keys = {normalize_key(ex.input) for ex in task.every_shown_example}
    for ex in task.every_shown_example:
        if task.output == "list":
            keys.update(normalize_key(item) for item in split_items(ex.output, task.parser.separators, "", _NO_LIMIT))
        else:
            keys.add(normalize_key(ex.output))
    keys.discard("")
    return frozenset(keys)


def is_echo(task: TaskSpec, raw: str, key: str, examples: frozenset[str]) -> bool:
    """Whether an output copies the prompt instead of answering, after the parser's leak filter.

    List tasks: some item the parser keeps repeats the query or an example's input or
    output item. Items that copy another query's example (a base model that answers
    ``flu jab`` for ``covid vaccine`` because the examples said so) are dropped by the
    parser and counted as ``example_leaks``, so the echo measure sees what is left:
    the query repeated, or, for a query that is itself an example input, that
    example's answer copied. Label tasks: the answer repeats the query.
    """
    if task.output == "label":
        answer = answer_text(task, raw) or ""
        lines = [line for line in answer.splitlines() if line.strip()]
        return bool(lines) and normalize_key(lines[0]).strip(' .:"') == key
    # keep_query: the query itself stays an item; the parser reads JSON answers
    # (structured output) as well as separated text.
    parsed = parse_output(task, raw, key, keep_query=True)
    items = {normalize_key(item) for item in parsed.value or ()}
    return key in items or bool(items & examples)


def example_leaks(task: TaskSpec, raw: str, key: str) -> int:
    """How many items of a list output the parser drops for copying a shown example."""
    return len(parse_output(task, raw, key).example_leaks) if task.output == "list" else 0


def measure(task: TaskSpec, rows: pa.Table | None, dead_records: Mapping[str, int], previous: pa.Table | None) -> dict[str, Any]:
    """Quality measures of a version.

    Args:
        task: the task spec.
        rows: the version's predictions (``key``, ``raw_output`` and the output column).
        dead_records: dead-letter records per reason code.
        previous: the previous published version's ``key`` and output column, if any.

    Returns:
        ``keys``, ``valid_rate``, ``failed_rate``, ``empty_rate``, ``echo_rate``,
        ``length_rate`` (rows cut off at ``max_tokens``), ``example_leak_rate`` (rows
        the parser dropped an item copying a shown example from), ``churn_rate`` (None
        where there is nothing to measure) and the counts behind them (``example_leaks``:
        items dropped).
    """
    n = rows.num_rows if rows is not None else 0
    failed = dead_records.get(Reason.UNPARSEABLE_OUTPUT, 0)
    lost = sum(dead_records.get(reason, 0) for reason in FAILURE_REASONS)
    out: dict[str, Any] = {
        "keys": n,
        "valid_rate": n / (n + failed) if n + failed else None,
        "failed_rate": lost / (n + lost) if n + lost else None,
    }
    if not n:
        return out | {
            "empty_rate": None,
            "echo_rate": None,
            "length_rate": None,
            "example_leak_rate": None,
            "example_leaks": 0,
            "churn_rate": None,
            "churn_compared": 0,
        }
    keys = rows.column("key").to_pylist()
    outputs = rows.column(task.output_column).to_pylist()
    raws = rows.column("raw_output").to_pylist()
    empty = sum(1 for value in outputs if not value)
    examples = example_keys(task)
    echoes = sum(1 for key, raw in zip(keys, raws, strict=True) if is_echo(task, raw or "", key, examples))
    leaks = [example_leaks(task, raw or "", key) for key, raw in zip(keys, raws, strict=True)]
    cut = rows.column("finish_reason").to_pylist().count("length") if "finish_reason" in rows.column_names else 0
    out |= {
        "empty_rate": empty / n,
        "echo_rate": echoes / n,
        "length_rate": cut / n,
        "example_leak_rate": sum(1 for count in leaks if count) / n,
        "example_leaks": sum(leaks),
    }
    if previous is None or previous.num_rows == 0 or task.output_column not in previous.column_names:
        return out | {"churn_rate": None, "churn_compared": 0}
    # Fanned-out tasks have a row per key and target language: a row is compared with its own language's.
    by_language = bool(task.target_languages) and "language" in rows.column_names and "language" in previous.column_names
    ids = list(zip(keys, rows.column("language").to_pylist(), strict=True)) if by_language else keys
    previous_ids = (
        list(zip(previous.column("key").to_pylist(), previous.column("language").to_pylist(), strict=True))
        if by_language
        else previous.column("key").to_pylist()
    )
    before = dict(zip(previous_ids, previous.column(task.output_column).to_pylist(), strict=True))
    shared = [(before[row_id], value) for row_id, value in zip(ids, outputs, strict=True) if row_id in before]
    changed = sum(1 for old, new in shared if old != new)
    return out | {"churn_rate": changed / len(shared) if shared else None, "churn_compared": len(shared)}


def failed_gates(task: TaskSpec, quality: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The gates a version misses, each with its threshold and measured value.

    A version without a single key never passes (gate ``min_keys``): whatever the
    reason, publishing it would replace every answer readers have with nothing.
    """
    gates = task.gates
    empty = [{"gate": "min_keys", "threshold": 1, "value": 0}] if quality.get("keys", 1) == 0 else []
    checks = [
        ("min_valid_rate", "valid_rate", gates.min_valid_rate, lambda v, t: v >= t),
        ("max_empty_rate", "empty_rate", gates.max_empty_rate, lambda v, t: v <= t),
        ("max_echo_rate", "echo_rate", gates.max_echo_rate, lambda v, t: v <= t),
        ("max_length_rate", "length_rate", gates.max_length_rate, lambda v, t: v <= t),
        ("max_churn_rate", "churn_rate", gates.max_churn_rate, lambda v, t: v <= t),
        ("max_failed_rate", "failed_rate", gates.max_failed_rate, lambda v, t: v <= t),
    ]
    return [
        {"gate": gate, "threshold": threshold, "value": round(quality[measure_name], 4)}
        for gate, measure_name, threshold, ok in checks
        if quality.get(measure_name) is not None and not ok(quality[measure_name], threshold)
    ] + empty
