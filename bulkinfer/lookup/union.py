"""One lookup row per key for fanned-out tables: the items of all its target languages, unioned.

A task with ``target_languages`` writes one prediction row per key and target language
(the unit that is generated, reused, checkpointed and dead-lettered). Lookups answer per
key: :func:`union_languages` turns those rows into one per key, as the store and the Redis
export serve it:

- the output column: the items of every language row, deduplicated with the job's
  ``normalize_key``, first occurrence first, languages in the task's ``target_languages``
  order;
- ``item_languages``: parallel to the output list, the language each item was generated for;
- ``languages``: the languages the key has a row in, in that order;
- ``language``: that language when there is one, else null;
- ``raw_output``: the raw text of each language, as a JSON object ``{language: text}``
  when there are several;
- ``prompt_tokens`` and ``output_tokens``: summed; ``finish_reason``: ``length`` if any
  row was cut off; ``run_id``: the latest; other columns: those of the first language.

Tables without fan-out (no ``target_languages``, each key once) pass through unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bulkinfer.keys import normalize_key
from bulkinfer.lookup.match import ITEM_LANGUAGES

if TYPE_CHECKING:
    import pyarrow as pa

LANGUAGES = "languages"
"""Column of unioned rows: the languages the key has a prediction row in."""


def target_languages(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The target languages of the task that made a version (empty without fan-out)."""
    spec = manifest.get("task_spec") or {}
    return tuple(spec.get("target_languages") or ())


def read_lookup_rows(vdir: str, manifest: dict[str, Any]) -> pa.Table:
    """A version's prediction shards as the store, the match index and the Redis export serve them
    (:func:`one_row_per_key`).

    Raises:
        TableError: the version has no prediction shards.
    """
    from bulkinfer.errors import TableError
    from bulkinfer.format import layout

    rows = layout.read_shards(vdir, layout.PREDICTIONS)
    if rows is None:
        raise TableError(f"{vdir} has no {layout.PREDICTIONS}-*.parquet files")
    return one_row_per_key(rows, manifest)


def one_row_per_key(rows: pa.Table, manifest: dict[str, Any]) -> pa.Table:
    """A version's prediction rows as lookups and matches see them: :func:`union_languages` for
    a fanned-out list version, the rows themselves otherwise."""
    languages = target_languages(manifest)
    if manifest.get("output_kind") != "list" or not languages:
        return rows
    return union_languages(rows, str(manifest.get("output_column", "")), languages)


def union_languages(rows: pa.Table, output_column: str, order: Sequence[str] = ()) -> pa.Table:
    """One row per key: the rows of a fanned-out version merged as the module docstring says.

    Args:
        rows: prediction rows (``key``, ``language`` and the list column ``output_column``).
        output_column: the task's output column (a list of strings).
        order: the task's target languages; languages not in it come after, by code.

    Returns:
        ``rows`` itself when no key repeats and ``order`` is empty; else one row per key,
        sorted by key, with ``item_languages`` and ``languages`` added.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if not order and (rows.num_rows == 0 or pc.count_distinct(rows.column("key")).as_py() == rows.num_rows):
        return rows
    rank = {code: i for i, code in enumerate(order)}
    records = rows.to_pylist()
    records.sort(key=lambda r: (r["key"], rank.get(r.get("language"), len(rank)), r.get("language") or ""))
    merged: list[dict[str, Any]] = []
    start = 0
    while start < len(records):
        end = start
        while end < len(records) and records[end]["key"] == records[start]["key"]:
            end += 1
        merged.append(_merge(records[start:end], output_column))
        start = end
    fields = [*rows.schema, pa.field(ITEM_LANGUAGES, pa.list_(pa.string())), pa.field(LANGUAGES, pa.list_(pa.string()))]
    return pa.Table.from_pylist(merged, schema=pa.schema(fields))


def _merge(group: list[dict[str, Any]], output_column: str) -> dict[str, Any]:
    first = dict(group[0])
    items: list[str] = []
    item_languages: list[str | None] = []
    seen: set[str] = set()
    for row in group:
        for item in row.get(output_column) or ():
            item_key = normalize_key(item)
            if item_key and item_key not in seen:
                seen.add(item_key)
                items.append(item)
                item_languages.append(row.get("language"))
    languages = [row["language"] for row in group if row.get("language")]
    first[output_column] = items
    first[ITEM_LANGUAGES] = item_languages
    first[LANGUAGES] = languages
    if len(group) > 1:
        first["language"] = None
        first["raw_output"] = json.dumps({row.get("language") or "": row.get("raw_output") for row in group}, ensure_ascii=False)
        for name in ("prompt_tokens", "output_tokens"):
            if name in first:
                first[name] = sum(row.get(name) or 0 for row in group)
        if "finish_reason" in first and any(row.get("finish_reason") == "length" for row in group):
            first["finish_reason"] = "length"
        if "run_id" in first:
            first["run_id"] = max(row.get("run_id") or "" for row in group)
    return first
