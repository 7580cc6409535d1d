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

from bulkinfer.keys import normalize_key, normalize_keys
from bulkinfer.lookup.match import ITEM_LANGUAGES, starts_run

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
    if not merges_languages(manifest):
        return rows
    return union_languages(rows, str(manifest.get("output_column", "")), target_languages(manifest))


def merges_languages(manifest: dict[str, Any]) -> bool:
    """Whether lookups see a version's rows merged per key (:func:`one_row_per_key`): a fanned-out list version."""
    return manifest.get("output_kind") == "list" and bool(target_languages(manifest))


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
    import pyarrow.compute as pc

    if not order and (rows.num_rows == 0 or pc.count_distinct(rows.column("key")).as_py() == rows.num_rows):
        return rows
    return _union_by_column(rows, output_column, order)


def _union_by_column(rows: pa.Table, output_column: str, order: Sequence[str]) -> pa.Table:
    """:func:`union_languages` in Arrow and numpy; Python touches only the strings that need JSON escaping
    and the item spellings that are not plain ASCII."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    names = rows.column_names
    language = rows.column("language").combine_chunks().cast(pa.string())
    rank = pc.fill_null(pc.index_in(language, value_set=pa.array(list(order), pa.string())), len(order))
    keyed = pa.table({"key": rows.column("key"), "rank": rank, "code": pc.fill_null(language, "")})
    # Stable, as the row-by-row merge sorted: rows equal in all three keep their order.
    ordering = pc.sort_indices(keyed, [("key", "ascending"), ("rank", "ascending"), ("code", "ascending")])
    ordered = rows.take(ordering)
    n = ordered.num_rows
    keys = ordered.column("key").combine_chunks()
    starts = np.flatnonzero(starts_run(keys))
    groups = len(starts)
    group = np.cumsum(starts_run(keys)) - 1
    sizes = np.diff(np.append(starts, n))
    several = sizes > 1
    language = ordered.column("language").combine_chunks().cast(pa.string())
    out = {name: ordered.column(name).take(pa.array(starts)) for name in names}

    # The items of every language row, deduplicated by the key normaliser, first occurrence first.
    answers = ordered.column(output_column).combine_chunks()
    parent = pc.list_parent_indices(answers).to_numpy()
    values = pc.list_flatten(answers).cast(pa.string())
    item_keys = normalize_keys(values)
    found = pa.table({"group": group[parent], "item": item_keys, "at": np.arange(len(parent))})
    found = found.filter(pc.fill_null(pc.not_equal(item_keys, ""), False))
    first = np.sort(found.group_by(["group", "item"], use_threads=False).aggregate([("at", "min")]).column("at_min").to_numpy())
    offsets = pa.array(np.concatenate(([0], np.cumsum(np.bincount(group[parent][first], minlength=groups)))), pa.int32())
    out[output_column] = pa.ListArray.from_arrays(offsets, values.take(pa.array(first)))
    out[ITEM_LANGUAGES] = pa.ListArray.from_arrays(offsets, language.take(pa.array(parent[first])))
    stated = np.flatnonzero(pc.fill_null(pc.not_equal(language, ""), False).to_numpy(zero_copy_only=False))
    language_offsets = pa.array(np.concatenate(([0], np.cumsum(np.bincount(group[stated], minlength=groups)))), pa.int32())
    out[LANGUAGES] = pa.ListArray.from_arrays(language_offsets, language.take(pa.array(stated)))

    if several.any():
        merged = pa.array(several)
        out["language"] = pc.if_else(merged, pa.scalar(None, pa.string()), out["language"]).cast(rows.schema.field("language").type)
        if "raw_output" in names:
            out["raw_output"] = pc.if_else(merged, _raw_outputs(ordered, language, group, starts, sizes), out["raw_output"])
        for name in ("prompt_tokens", "output_tokens"):
            if name in names:
                summed = np.add.reduceat(pc.fill_null(ordered.column(name), 0).to_numpy().astype(np.int64), starts)
                out[name] = pc.if_else(merged, pa.array(summed).cast(out[name].type), out[name])
        if "finish_reason" in names:
            cut = np.add.reduceat(pc.fill_null(pc.equal(ordered.column("finish_reason"), "length"), False).to_numpy(), starts) > 0
            out["finish_reason"] = pc.if_else(pa.array(several & cut), "length", out["finish_reason"])
        if "run_id" in names:
            by_group = pa.table({"group": group, "run_id": pc.fill_null(ordered.column("run_id"), "")})
            latest = by_group.group_by("group", use_threads=False).aggregate([("run_id", "max")]).sort_by("group")
            out["run_id"] = pc.if_else(merged, latest.column("run_id_max"), out["run_id"])
    fields = [*rows.schema, pa.field(ITEM_LANGUAGES, pa.list_(pa.string())), pa.field(LANGUAGES, pa.list_(pa.string()))]
    schema = pa.schema(fields)
    return pa.table({field.name: out[field.name] for field in schema}, schema=schema)


def _raw_outputs(ordered: pa.Table, language: pa.Array, group: Any, starts: Any, sizes: Any) -> pa.Array:
    """Per group, ``json.dumps({language or "": raw_output, ...}, ensure_ascii=False)`` over its rows, in Arrow.

    Groups that name a language twice (a dict keeps the first place and the last text) are
    dumped by ``json`` itself."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    def text(literal: str) -> pa.Scalar:
        return pa.scalar(literal, pa.large_string())

    codes = pc.fill_null(language, "")
    pairs = pc.binary_join_element_wise(_json_literals(codes), _json_literals(ordered.column("raw_output").combine_chunks()), text(": "))
    offsets = pa.array(np.append(starts, len(group)), pa.int32())
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, pairs), text(", "))
    objects = pc.binary_join_element_wise(text("{"), joined, text("}"), text(""))
    distinct = pa.table({"group": group, "code": codes}).group_by(["group"], use_threads=False).aggregate([("code", "count_distinct")])
    repeated = distinct.sort_by("group").column("code_count_distinct").to_numpy() < sizes
    if repeated.any():
        rows_of = np.split(np.arange(len(group)), starts[1:])
        raws, codes_list = ordered.column("raw_output").to_pylist(), codes.to_pylist()
        dumped = {
            g: json.dumps({codes_list[i]: raws[i] for i in rows_of[g]}, ensure_ascii=False) for g in np.flatnonzero(repeated).tolist()
        }
        slot = np.where(repeated, np.cumsum(repeated) - 1, 0)
        fixed = pa.array([dumped[g] for g in sorted(dumped)], pa.large_string()).take(pa.array(slot))
        objects = pc.if_else(pa.array(repeated), fixed, objects)
    return objects.cast(pa.string())


def _json_literals(values: pa.Array) -> pa.Array:
    """``json.dumps(value, ensure_ascii=False)`` of each string (``null`` for nulls), as the row-by-row merge wrote them."""
    import pyarrow as pa

    from bulkinfer.lookup.store import json_strings

    return json_strings(values, lambda value: json.dumps(value, ensure_ascii=False)).cast(pa.large_string())


def _union_by_row(rows: pa.Table, output_column: str, order: Sequence[str] = ()) -> pa.Table:
    """The row-by-row merge :func:`union_languages` replaced; kept as the reference its tests compare with."""
    import pyarrow as pa

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
