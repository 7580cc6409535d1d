"""Turns raw model text into a task's typed output."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bulkinfer.keys import normalize_key, strings_holding

if TYPE_CHECKING:  # the spec validates its examples with this parser: the dependency runs spec -> parsing only
    import numpy as np
    import pyarrow as pa

    from bulkinfer.tasks.spec import TaskSpec

# Bullets, list numbers and quotes a model wraps items in: "- x", "1. x", "\"x\"".
_LEADING = re.compile(r"^(?:[-*•·]+|\d{1,3}[.)])\s+")
_WRAPPING = "\"'`“”‘’«»()[]{} \t"
_TRAILING = ".;:!?"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_PLAIN_LEADING = "^(?:[-*]+|[0-9]{1,3}[.)]) +"
"""``_LEADING`` in RE2 for plain text (printable ASCII: no tabs, and bullets • and · are not ASCII)."""


def plain_rows(texts: pa.Array) -> np.ndarray:
    """Which strings hold only printable ASCII and line breaks (numpy booleans), found over the whole buffer at once."""
    return ~strings_holding(texts, lambda data: ((data < 0x20) & (data != 0x0A)) | (data > 0x7E))


def split_plain_items(raws: pa.Array, separators: Sequence[str]) -> tuple[np.ndarray, pa.Array]:
    """The items of plain list answers (:func:`plain_rows`), cut and cleaned by Arrow kernels as :func:`clean_items` does.

    Returns each item's row (numpy, ascending) and the items, in answer order, before
    :func:`clean_items` drops the empty ones, the query and repeats. ASCII text needs no
    control characters removed and holds no whitespace but spaces inside an item, so
    every step is an Arrow kernel; for such text the items' keys are their lower case.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    plain_separators = [s for s in separators if s.isascii()]  # no other occurs in ASCII text
    pattern = "|".join("".join(f"\\x{{{ord(ch):x}}}" for ch in s) for s in (*plain_separators, "\n"))  # RE2 literals
    pieces = pc.split_pattern_regex(raws, pattern)
    owner = pc.list_parent_indices(pieces).to_numpy()
    items = pc.utf8_trim(pc.list_flatten(pieces), " ")
    # The bullet pattern runs only on items that start like a bullet or a number (few do).
    bulleted = pc.is_in(pc.utf8_slice_codeunits(items, 0, 1), value_set=pa.array(["-", "*", *"0123456789"]))
    bulleted = bulleted.to_numpy(zero_copy_only=False)
    if bulleted.any():
        unbulleted = pc.replace_substring_regex(items.filter(pa.array(bulleted)), _PLAIN_LEADING, "", max_replacements=1)
        items = pc.if_else(pa.array(bulleted), unbulleted.take(pa.array(np.maximum(np.cumsum(bulleted) - 1, 0))), items)
    items = pc.utf8_trim(pc.utf8_rtrim(pc.utf8_trim(items, _WRAPPING), _TRAILING), _WRAPPING)
    items = pc.replace_substring_regex(items, "  +", " ")  # " ".join(item.split()): trimmed already, runs inside remain
    return owner, items if isinstance(items, pa.Array) else items.combine_chunks()


@dataclass(frozen=True)
class Parsed:
    """A parse result: ``value`` when readable, else ``error`` says why not."""

    value: list[str] | str | None = None
    """A list of strings (``list`` tasks) or one label (``label`` tasks)."""
    error: str | None = None
    """Why the text could not be read, for the dead-letter message."""
    example_leaks: tuple[str, ...] = ()
    """``list`` tasks: items dropped because they copy a shown example (its input or an
    item of its answer) of another query than this one."""


def parse_output(task: TaskSpec, raw: str, key: str, *, keep_query: bool = False) -> Parsed:
    """Parses one raw generation.

    ``list`` tasks: split on the separators and line breaks, trim bullets, quotes
    and trailing punctuation, drop empty items and the query itself, dedupe by
    normalised key keeping the model's order, drop items that copy a shown example
    (an example's input or answer item, unless that example is this very query:
    ``example_leaks``), keep at most ``max_items``. An empty list is a valid answer
    (the model found nothing). ``label`` tasks: the first line must name one of the
    labels (case-insensitive).

    Never raises on any string. Loops over many rows should hold
    ``compile_parser(task)`` and call its ``parse``: the same result without
    looking the task's compiled parts up on every call.

    Args:
        task: the task spec.
        raw: the generated text.
        key: the query's normalised key.
        keep_query: keep an item that repeats the query (the echo measure looks for them).

    Returns:
        The typed value, or an error saying why there is none.
    """
    return compile_parser(task).parse(raw, key, keep_query=keep_query)


class OutputParser:
    """A task's parser with everything that does not depend on the row worked out once.

    Hashing a task spec walks all its fields and examples, so the per-task parts
    (the task without an item limit, the normalised example items) are looked up
    here once instead of on every row; :func:`compile_parser` builds one per task.
    """

    def __init__(self, task: TaskSpec):
        """Args:
        task: the task spec whose output this parses.
        """
        self.task = task
        self.unlimited = _unlimited(task)
        self.by_input = _example_items_by_input(task) if task.output == "list" else {}
        """Normalised items of the shown examples, by their normalised input."""
        self.every_example_item = _every_example_item(task) if task.output == "list" else frozenset()
        """The normalised inputs and answer items of all shown examples: what a query that is no example input must not copy."""

    def parse(self, raw: str, key: str, *, keep_query: bool = False) -> Parsed:
        """:func:`parse_output` for this parser's task."""
        task = self.task
        answer = answer_text(task, raw)
        if answer is None:
            return Parsed(error=f"answer marker {task.parser.answer_marker!r} not found in the output")
        if task.output != "list":
            return parse_answer(task, answer, key)
        # Parsed without the item limit first: leaks must not take the places of real items.
        if self.unlimited.structured.json_schema is None:
            items = _clean_items(_splitter(task.parser.separators).split(answer), "" if keep_query else key, 10**9)
        else:
            parsed = parse_answer(self.unlimited, answer, "" if keep_query else key)
            if parsed.value is None:
                return parsed
            items = [(item, normalize_key(item)) for item in parsed.value]
        leaked = self.example_items(key)
        kept: list[str] = []
        leaks: list[str] = []
        for item, item_key in items:
            (leaks if item_key in leaked else kept).append(item)
        return Parsed(value=kept[: task.parser.max_items], example_leaks=tuple(leaks))

    def parse_column(self, raws: Sequence[str], keys: Sequence[str]) -> tuple[pa.Array, dict[int, str]]:
        """:meth:`parse` of many rows: the values as one Arrow array (null where a row has an error), and the errors by row.

        Plain answers (printable ASCII and line breaks) of a list task without JSON output
        or an answer marker, whose key is no example's input, are split and cleaned by
        Arrow kernels, by the rules of :func:`clean_items` and the leak filter; every other
        row is parsed by :meth:`parse`. Both give the same values (a test compares them
        on messy answers).
        """
        import numpy as np
        import pyarrow as pa

        task = self.task
        out_type = pa.list_(pa.string()) if task.output == "list" else pa.string()
        columnar = task.output == "list" and task.structured.json_schema is None and not task.parser.answer_marker
        raw_column = pa.array(raws, pa.string())
        plain = plain_rows(raw_column) if columnar else np.zeros(len(raws), bool)
        if plain.any() and self.by_input:
            plain &= ~np.array([key in self.by_input for key in keys], bool)  # an example's own query: its leak set differs
        values: list[pa.Array] = []
        errors: dict[int, str] = {}
        at = np.flatnonzero(plain)
        if len(at):
            values.append(self._plain_lists(raw_column.take(pa.array(at)), pa.array(keys, pa.string()).take(pa.array(at))))
        other = np.flatnonzero(~plain)
        if len(other):
            parsed = [self.parse(raws[i], keys[i]) for i in other.tolist()]
            errors = {int(i): p.error for i, p in zip(other, parsed, strict=True) if p.error is not None}
            values.append(pa.array([p.value for p in parsed], out_type))
        if not values:
            return pa.array([], out_type), errors
        order = np.argsort(np.concatenate([at, other]), kind="stable")
        return pa.concat_arrays(values).take(pa.array(order)), errors

    def _plain_lists(self, raws: pa.Array, keys: pa.Array) -> pa.Array:
        """The list values of plain answers (see :meth:`parse_column`), by Arrow kernels."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        task = self.task
        owner, items = split_plain_items(raws, task.parser.separators)
        item_keys = pc.ascii_lower(items)  # normalize_key of printable ASCII with single spaces
        own = keys.take(pa.array(owner))
        keep = pc.and_(pc.not_equal(item_keys, ""), pc.not_equal(item_keys, own))
        table = pa.table({"owner": owner, "item": items, "key": item_keys}).filter(keep)
        table = table.append_column("at", pa.array(np.arange(table.num_rows, dtype=np.int64)))
        # A repeated item counts once, where it first stands (items are in row order, then answer order).
        first = table.group_by(["owner", "key"], use_threads=False).aggregate([("at", "min")]).column("at_min").to_numpy()
        table = table.take(pa.array(np.sort(first)))
        if self.every_example_item:
            table = table.filter(pc.invert(pc.is_in(table.column("key"), value_set=pa.array(sorted(self.every_example_item)))))
        # At most max_items per row: an item's place among its row's kept items.
        owner = table.column("owner").to_numpy()
        starts = np.flatnonzero(np.diff(owner, prepend=-1))
        place = np.arange(len(owner)) - np.repeat(starts, np.diff(np.append(starts, len(owner))))
        table = table.filter(pa.array(place < task.parser.max_items))
        counts = np.bincount(table.column("owner").to_numpy(), minlength=len(raws))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), table.column("item").combine_chunks())

    def example_items(self, key: str) -> frozenset[str]:
        """:func:`example_items` for this parser's task."""
        own = self.by_input.get(key)
        if own is None:
            return self.every_example_item
        return frozenset(item for example_input, items in self.by_input.items() if example_input != key for item in items)


@functools.lru_cache(maxsize=64)
def compile_parser(task: TaskSpec) -> OutputParser:
    """The task's :class:`OutputParser`, built once per task."""
    return OutputParser(task)


def example_items(task: TaskSpec, key: str) -> frozenset[str]:
    """Normalised inputs and answer items of the shown examples, except those of an example whose input is ``key``."""
    return compile_parser(task).example_items(key)


@functools.lru_cache(maxsize=64)
def _example_items_by_input(task: TaskSpec) -> dict[str, frozenset[str]]:
    by_input: dict[str, set[str]] = {}
    for example in task.every_shown_example:
        example_input = normalize_key(example.input)
        items = by_input.setdefault(example_input, set())
        items.add(example_input)
        if task.structured.json_schema is None:
            items.update(normalize_key(item) for item in split_items(example.output, task.parser.separators, "", 10**9))
        else:
            parsed = parse_answer(_unlimited(task), example.output, "")
            items.update(normalize_key(item) for item in parsed.value or ())
    return {example_input: frozenset(items - {""}) for example_input, items in by_input.items()}


@functools.lru_cache(maxsize=64)
def _every_example_item(task: TaskSpec) -> frozenset[str]:
    return frozenset(item for items in _example_items_by_input(task).values() for item in items)


@functools.lru_cache(maxsize=64)
def _unlimited(task: TaskSpec) -> TaskSpec:
    import dataclasses

    return dataclasses.replace(task, parser=dataclasses.replace(task.parser, max_items=10**9))


def parse_answer(task: TaskSpec, answer: str, key: str) -> Parsed:
    """Parses the answer part of a generation (after the answer marker, if any)."""
    if task.structured.json_schema is not None:
        return _parse_json(task, answer, key)
    if task.output == "label":
        return _parse_label(task, answer)
    return Parsed(value=split_items(answer, task.parser.separators, key, task.parser.max_items))


def answer_text(task: TaskSpec, raw: str) -> str | None:
    """The part of the raw text that holds the answer: after the last answer marker, if the task has one."""
    marker = task.parser.answer_marker
    if not marker:
        return raw
    return raw.rsplit(marker, 1)[1] if marker in raw else None


def split_items(text: str, separators: tuple[str, ...], key: str, max_items: int) -> list[str]:
    """Splits a list answer into clean, distinct items other than the query itself."""
    return clean_items(_splitter(separators).split(text), key, max_items)


@functools.lru_cache(maxsize=64)
def _splitter(separators: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(s) for s in (*separators, "\n")))


def clean_items(pieces: list[str], key: str, max_items: int) -> list[str]:
    """Trims bullets, quotes and trailing punctuation; drops empty items, the query and repeats."""
    return [item for item, _ in _clean_items(pieces, key, max_items)]


def _clean_items(pieces: list[str], key: str, max_items: int) -> list[tuple[str, str]]:
    """:func:`clean_items` with each item's key."""
    items: list[tuple[str, str]] = []
    seen = {key}
    for piece in pieces:
        piece = _CONTROL.sub("", piece)
        item = _LEADING.sub("", piece.strip()).strip(_WRAPPING).rstrip(_TRAILING).strip(_WRAPPING)
        item = " ".join(item.split())
        item_key = normalize_key(item)
        if not item_key or item_key in seen:
            continue
        seen.add(item_key)
        items.append((item, item_key))
        if len(items) == max_items:
            break
    return items


def _parse_json(task: TaskSpec, answer: str, key: str) -> Parsed:
    try:
        # strict=False: grammar engines (xgrammar in vLLM) let raw control characters
        # into JSON strings, which strict JSON forbids; the items are cleaned below.
        value = json.loads(answer, strict=False)
    except json.JSONDecodeError as e:
        # Under a JSON-schema constraint only a cut-off answer gets here.
        return Parsed(error=f"output is not complete JSON ({e.msg}, character {e.pos}); raise sampling.max_tokens if it was cut off")
    field = task.parser.json_field
    if field is not None:
        if not isinstance(value, dict) or field not in value:
            return Parsed(error=f"output JSON has no member {field!r} (parser.json_field)")
        value = value[field]
    if task.output == "label":
        if not isinstance(value, str):
            return Parsed(error=f"expected a JSON string holding one of the labels, got {type(value).__name__}")
        return _parse_label(task, value)
    if not isinstance(value, list):
        return Parsed(error=f"expected a JSON array of strings, got {type(value).__name__}")
    pieces = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value]
    return Parsed(value=clean_items(pieces, key, task.parser.max_items))


def _parse_label(task: TaskSpec, answer: str) -> Parsed:
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines:
        return Parsed(error=f"empty output; expected one of {list(task.labels)}")
    first = normalize_key(lines[0]).strip(_WRAPPING + _TRAILING)
    by_key = {normalize_key(label): label for label in task.labels}
    if first in by_key:
        return Parsed(value=by_key[first])
    words = first.split()
    if words and words[0].strip(_TRAILING + ",") in by_key:
        return Parsed(value=by_key[words[0].strip(_TRAILING + ",")])
    return Parsed(error=f"{lines[0].strip()[:80]!r} is not one of the labels {list(task.labels)}")
