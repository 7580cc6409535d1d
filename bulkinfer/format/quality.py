"""Quality measures of a new version, and the gates that keep a bad one from being published."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from bulkinfer.errors import Reason
from bulkinfer.keys import normalize_key, normalize_keys
from bulkinfer.tasks.parsing import (
    OutputParser,
    answer_text,
    compile_parser,
    parse_answer,
    parse_output,
    plain_rows,
    split_items,
    split_plain_items,
)
from bulkinfer.tasks.spec import TaskSpec

_NO_LIMIT = 10**9

ROW_COUNTS = ("empty", "echoes", "cut_off", "leak_rows", "example_leaks")
"""The counts of rows (items, for ``example_leaks``) behind the rates :func:`measure` returns, kept in the manifest."""

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
        return _label_answer_key(task, raw) == key
    # keep_query: the query itself stays an item; the parser reads JSON answers
    # (structured output) as well as separated text.
    parsed = parse_output(task, raw, key, keep_query=True)
    items = {normalize_key(item) for item in parsed.value or ()}
    return key in items or bool(items & examples)


def _label_answer_key(task: TaskSpec, raw: str) -> str | None:
    """The normalised first line of a label answer, which an echo makes the query's key; None without one."""
    answer = answer_text(task, raw) or ""
    lines = [line for line in answer.splitlines() if line.strip()]
    return normalize_key(lines[0]).strip(' .:"') if lines else None


def example_leaks(task: TaskSpec, raw: str, key: str) -> int:
    """How many items of a list output the parser drops for copying a shown example."""
    return len(parse_output(task, raw, key).example_leaks) if task.output == "list" else 0


def measure(
    task: TaskSpec,
    rows: pa.Table | None,
    dead_records: Mapping[str, int],
    previous: pa.Table | None,
    same_as: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Quality measures of a version.

    Args:
        task: the task spec.
        rows: the version's predictions (``key``, ``raw_output``, ``finish_reason`` and the output
            column; with ``same_as``, only how many there are is read).
        dead_records: dead-letter records per reason code.
        previous: the previous published version's ``key`` and output column, if any.
        same_as: the ``quality`` section of the previous version's manifest where this
            version's answers are that version's (the same rows of key, language, raw
            output, parsed output and finish reason, under the same task fingerprint):
            its row counts are taken instead of parsing every answer again, and nothing
            churned (``previous`` is not read).

    Returns:
        ``keys``, ``valid_rate``, ``failed_rate``, ``empty_rate``, ``echo_rate``,
        ``length_rate`` (rows cut off at ``max_tokens``), ``example_leak_rate`` (rows
        the parser dropped an item copying a shown example from), ``churn_rate`` (None
        where there is nothing to measure) and the counts behind them (:data:`ROW_COUNTS`;
        ``example_leaks``: items dropped).
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
        return (
            out
            | dict.fromkeys(ROW_COUNTS, 0)
            | {
                "empty_rate": None,
                "echo_rate": None,
                "length_rate": None,
                "example_leak_rate": None,
                "churn_rate": None,
                "churn_compared": 0,
            }
        )
    carried = carries(same_as)
    counts = {name: int(same_as[name]) for name in ROW_COUNTS} if carried else _row_counts(task, rows)
    out |= counts | {
        "empty_rate": counts["empty"] / n,
        "echo_rate": counts["echoes"] / n,
        "length_rate": counts["cut_off"] / n,
        "example_leak_rate": counts["leak_rows"] / n,
    }
    if carried:
        return out | {"churn_rate": 0.0, "churn_compared": n}  # the same answers for the same keys
    if previous is None or previous.num_rows == 0 or task.output_column not in previous.column_names:
        return out | {"churn_rate": None, "churn_compared": 0}
    # Fanned-out tasks have a row per key and target language: a row is compared with its own language's.
    by_language = bool(task.target_languages) and "language" in rows.column_names and "language" in previous.column_names
    on = ["key", "language"] if by_language else ["key"]
    shared, changed = _churn(rows.select(on), rows.column(task.output_column), previous.select(on), previous.column(task.output_column))
    return out | {"churn_rate": changed / shared if shared else None, "churn_compared": shared}


def carries(same_as: Mapping[str, Any] | None) -> bool:
    """Whether a previous version's ``quality`` section holds the row counts that :func:`measure` carries forward."""
    return same_as is not None and all(isinstance(same_as.get(name), int) for name in ROW_COUNTS)


def _row_counts(task: TaskSpec, rows: pa.Table) -> dict[str, int]:
    import pyarrow.compute as pc

    keys = rows.column("key").combine_chunks()
    echoes, leak_rows, leak_items = _echoes_and_leaks(task, keys, pc.fill_null(rows.column("raw_output"), "").combine_chunks())
    cut = int(pc.sum(pc.equal(rows.column("finish_reason"), "length")).as_py() or 0) if "finish_reason" in rows.column_names else 0
    empty = _count_empty(rows.column(task.output_column))
    return {"empty": empty, "echoes": echoes, "cut_off": cut, "leak_rows": leak_rows, "example_leaks": leak_items}


def _echoes_and_leaks(task: TaskSpec, keys: pa.Array, raws: pa.Array) -> tuple[int, int, int]:
    """Rows that echo (:func:`is_echo`), rows with example leaks, and leaked items (:func:`example_leaks`).

    Each distinct raw output is parsed once (:func:`_candidate_table`: in Arrow where it
    is plain text); what depends on the row's key is then a column operation. For a key
    that is no example input, the parser drops the same items whatever the key (every
    example's items), so what an output keeps is the raw text's alone; the few keys that
    are example inputs take the per-row path.
    """
    import numpy as np
    import pyarrow.compute as pc

    encoded = raws.dictionary_encode()
    distinct, index = encoded.dictionary, encoded.indices
    if task.output == "label":
        answers = pa.array([_label_answer_key(task, raw) for raw in distinct.to_pylist()], pa.string())
        return int(pc.sum(pc.equal(pc.take(answers, index), keys)).as_py() or 0), 0, 0
    parser = compile_parser(task)
    examples, copied = example_keys(task), parser.every_example_item
    found = _candidate_table(parser, distinct)
    raw, item = found.column("raw").to_numpy(), found.column("item")
    is_copied = pc.is_in(item, value_set=pa.array(sorted(copied), pa.string())).to_numpy(zero_copy_only=False)
    # Kept: the items not copied, at most max_items of them per raw output (rows are in answer order).
    kept_raw = raw[~is_copied]
    at = np.arange(len(kept_raw))
    first = np.maximum.accumulate(np.where(np.r_[True, kept_raw[1:] != kept_raw[:-1]] if len(kept_raw) else at, at, 0))
    kept = np.flatnonzero(~is_copied)[at - first < task.parser.max_items]
    kept_items = item.take(pa.array(kept))
    copies_example = np.zeros(len(distinct), bool)
    in_examples = pc.is_in(kept_items, value_set=pa.array(sorted(examples), pa.string())).to_numpy(zero_copy_only=False)
    copies_example[raw[kept][in_examples]] = True
    leaked_count = np.bincount(raw[is_copied], minlength=len(distinct))

    def pairs(rows: Any, items: pa.Array) -> pa.Array:  # "raw index\0item"
        return pc.binary_join_element_wise(pc.cast(pa.array(rows), pa.string()), items, "\0")

    row_pairs = pairs(index, keys)
    repeats_key = pc.is_in(row_pairs, value_set=pairs(raw[kept], kept_items))
    # The parser never counts the query itself as a leak: its own key leaves one leaked item out.
    leaks = pc.subtract(
        pc.take(pa.array(leaked_count, pa.int64()), index),
        pc.cast(pc.is_in(row_pairs, value_set=pairs(raw[is_copied], item.filter(pa.array(is_copied)))), pa.int64()),
    )
    echo = pc.or_(pc.take(pa.array(copies_example, pa.bool_()), index), repeats_key)
    general = pc.invert(pc.is_in(keys, value_set=pa.array(sorted(parser.by_input), pa.string())))
    echoes = int(pc.sum(pc.and_(echo, general)).as_py() or 0)
    leak_rows = int(pc.sum(pc.and_(pc.greater(leaks, 0), general)).as_py() or 0)
    leak_items = int(pc.sum(pc.filter(leaks, general)).as_py() or 0)
    for position in pc.indices_nonzero(pc.invert(general)).to_pylist():
        key, text = keys[position].as_py(), distinct[index[position].as_py()].as_py()
        echoes += is_echo(task, text, key, examples)
        count = example_leaks(task, text, key)
        leak_rows, leak_items = leak_rows + bool(count), leak_items + count
    return echoes, leak_rows, leak_items


def _candidate_table(parser: OutputParser, raws: pa.Array) -> pa.Table:
    """:func:`_candidate_items` of every raw output, as rows ``raw`` (index into ``raws``) and
    ``item``, in answer order.

    Plain answers of a task with plain separators (no JSON, no answer marker) are split
    and cleaned by Arrow kernels (:func:`bulkinfer.tasks.parsing.split_plain_items`, the
    job's own batch parser); the rest are parsed in Python, each once.
    """
    import numpy as np
    import pyarrow.compute as pc

    task = parser.task
    columnar = task.structured.json_schema is None and not task.parser.answer_marker
    raws = raws.cast(pa.string())
    plain = plain_rows(raws) if columnar else np.zeros(len(raws), bool)
    parts = []
    if plain.any():
        plain_at = np.flatnonzero(plain)
        owner, items = split_plain_items(raws.take(pa.array(plain_at)), task.parser.separators)
        parts.append((plain_at[owner], normalize_keys(items)))
    other = np.flatnonzero(~plain)
    if len(other):
        texts = raws.take(pa.array(other)).to_pylist()
        found = [(i, item) for i, text in zip(other.tolist(), texts, strict=True) for item in _candidate_items(parser, text)]
        parts.append((np.array([i for i, _ in found], np.int64), pa.array([item for _, item in found], pa.string())))
    if not parts:
        return pa.table({"raw": pa.array([], pa.int64()), "item": pa.array([], pa.string())})
    owner = np.concatenate([p[0] for p in parts]).astype(np.int64)
    items = pa.concat_arrays([p[1] for p in parts])
    order = np.argsort(owner, kind="stable")  # by raw output, answer order kept
    table = pa.table({"raw": owner[order], "item": items.take(pa.array(order))})
    table = table.filter(pc.not_equal(table.column("item"), ""))
    table = table.append_column("at", pa.array(np.arange(table.num_rows)))
    # An item repeated in the same answer counts once, where it first stands.
    first = table.group_by(["raw", "item"], use_threads=False).aggregate([("at", "min")]).column("at_min").to_numpy()
    return table.take(pa.array(np.sort(first))).select(["raw", "item"])


def _candidate_items(parser: OutputParser, raw: str) -> list[str]:
    """The normalised items of a list answer before the leak filter and the item limit, the query kept."""
    answer = answer_text(parser.task, raw)
    if answer is None:
        return []
    parsed = parse_answer(parser.unlimited, answer, "")
    return [normalize_key(item) for item in parsed.value or ()]


def _count_empty(outputs: pa.ChunkedArray) -> int:
    """Rows whose output is null, an empty list or an empty label."""
    import pyarrow.compute as pc

    if pa.types.is_list(outputs.type) or pa.types.is_large_list(outputs.type):
        empty = pc.equal(pc.list_value_length(outputs), 0)
    elif pa.types.is_string(outputs.type) or pa.types.is_large_string(outputs.type):
        empty = pc.equal(outputs, "")
    else:
        return sum(1 for value in outputs.to_pylist() if not value)
    return int(pc.sum(pc.fill_null(empty, True)).as_py() or 0)


def _churn(ids: pa.Table, outputs: pa.ChunkedArray, before_ids: pa.Table, before: pa.ChunkedArray) -> tuple[int, int]:
    """Rows in both versions (by their id columns: the key, and the language for fanned-out
    tasks), and how many of them changed their output, by a join on those columns."""
    import pyarrow.compute as pc

    new = ids.append_column("new", _comparable(outputs))
    old = before_ids.append_column("old", _comparable(before))
    joined = new.join(old, ids.column_names, join_type="inner")
    if joined.num_rows == 0:
        return 0, 0
    if joined.schema.field("new").type != joined.schema.field("old").type:
        return joined.num_rows, joined.num_rows  # a list and a label never equal each other
    equal = pc.equal(joined["new"], joined["old"])
    both_null = pc.and_(pc.is_null(joined["new"]), pc.is_null(joined["old"]))
    same = pc.if_else(pc.is_null(equal), both_null, equal)
    return joined.num_rows, joined.num_rows - int(pc.sum(same).as_py() or 0)


def _comparable(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Outputs as strings a join can carry: list items joined on a control character the parser never keeps."""
    import pyarrow.compute as pc

    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        return pc.binary_join(values, "\0")
    return values


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
