"""Two prediction tables side by side: may model B (distilled, fine-tuned, smaller) replace model A?

    bulkinfer compare --table tables/synonyms --table tables/synonyms-student --out report.json

Measures on the keys both tables hold: exact agreement; for list tasks the
Jaccard similarity of the two item sets (items compared by ``normalize_key``, so
``Budget Flights`` and ``budget flights`` are the same item); for label tasks
accuracy of B against A as the reference and a confusion matrix. Per side: empty
rate, mean item count or label distribution, mean output tokens. Plus key
coverage and a sample of disagreements chosen by a hash of the key, so a rerun
shows the same ones.

The key join runs in Arrow (a hash join of keys and row numbers); exact
agreement is vectorised; only rows whose lists differ are turned into Python
objects for the Jaccard, a slice at a time.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bulkinfer.errors import ConfigError, TableError
from bulkinfer.format import layout
from bulkinfer.keys import normalize_key

_SLICE = 65_536
_CONFUSION_PAIRS = 50
# Joins list items into one string for a vectorised equality test. Items never hold it:
# the parser collapses whitespace and \x1f is whitespace to str.split.
_UNIT_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class Side:
    """One of the two compared versions, from its manifest."""

    table: str
    """The table directory."""
    version: str
    """The version compared (the run id that produced it)."""
    published: bool
    """Whether ``CURRENT`` names this version."""
    gates_passed: bool | None
    """Whether the version passed its quality gates (None: the manifest does not say)."""
    model: str
    """The model as given to the run (``--model``)."""
    model_digest: str
    """Digest of the model's config, tokenizer and weight files."""
    task: str
    """Task name."""
    task_fingerprint: str
    """Digest of the task spec."""
    finished_at: str
    """When the run finished (UTC, ISO 8601)."""
    keys: int
    """Prediction rows in the version."""


@dataclass(frozen=True)
class OutputStats:
    """One side's outputs on the shared keys."""

    empty_rate: float | None
    """Share of rows with an empty output (an empty list, or no label)."""
    mean_items: float | None
    """List tasks: mean number of items per row."""
    mean_output_tokens: float | None
    """Mean generated tokens per row (each model's own tokenizer)."""
    labels: dict[str, int]
    """Label tasks: rows per label, most common first; empty for list tasks."""


@dataclass(frozen=True)
class Disagreement:
    """One shared key whose outputs differ."""

    key: str
    """The normalised key."""
    a: list[str] | str | None
    """Table A's output."""
    b: list[str] | str | None
    """Table B's output."""
    jaccard: float | None
    """List tasks: Jaccard similarity of the two normalised item sets."""


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare_tables`. Rates are shares of the shared keys, rounded to 4 places."""

    a: Side
    """Table A: the reference (the model in service)."""
    b: Side
    """Table B: the candidate."""
    output_kind: str
    """``list`` or ``label``."""
    output_column: str
    """The typed output column compared."""
    shared: int
    """Keys in both tables."""
    only_a: int
    """Keys only in A."""
    only_b: int
    """Keys only in B."""
    exact: int
    """Shared keys whose outputs are identical (lists: same items in the same order)."""
    exact_rate: float | None
    """``exact / shared``; None without shared keys."""
    same_set_rate: float | None
    """List tasks: share whose normalised item sets are equal (Jaccard 1; both empty counts)."""
    jaccard_mean: float | None
    """List tasks: mean Jaccard of the normalised item sets (both empty: 1, one empty: 0)."""
    jaccard_median: float | None
    """List tasks: median Jaccard."""
    jaccard_at_least_half: float | None
    """List tasks: share with Jaccard >= 0.5."""
    accuracy: float | None
    """Label tasks: share where B's label is A's (A taken as the reference)."""
    confusion: list[tuple[str, str, int]]
    """Label tasks: (label in A, label in B, keys), most common first, at most 50 pairs."""
    stats_a: OutputStats
    """A's outputs on the shared keys."""
    stats_b: OutputStats
    """B's outputs on the shared keys."""
    disagreements: int
    """Shared keys whose outputs are not identical."""
    sample: tuple[Disagreement, ...]
    """Some disagreements: those whose key hash is smallest, so reruns show the same ones."""
    seconds: float
    """Wall time of the comparison."""

    def to_dict(self) -> dict[str, Any]:
        """The comparison as JSON-ready data."""
        out = asdict(self)
        out["confusion"] = [{"a": a, "b": b, "count": n} for a, b, n in self.confusion]
        return out


def compare_tables(table_a: str, table_b: str, version_a: str | None = None, version_b: str | None = None, sample: int = 20) -> Comparison:
    """Compares two prediction tables of the same output kind on their shared keys.

    Args:
        table_a: the reference table (the model in service).
        table_b: the candidate table.
        version_a: A's version; default: the published one. Unpublished versions
            (a shadow run whose gates failed, say) may be compared too.
        version_b: B's version; default: the published one.
        sample: how many disagreements to keep (0: none).

    Returns:
        The measures, both sides' provenance and the sample.

    Raises:
        ConfigError: ``sample`` is negative.
        TableError: a table or version does not exist, or the two tables have
            different output kinds or columns.
    """
    started = time.perf_counter()
    if sample < 0:
        raise ConfigError(f"--sample must be >= 0, got {sample}")
    side_a, manifest_a = _side(table_a, version_a)
    side_b, manifest_b = _side(table_b, version_b)
    kind_a, kind_b = manifest_a.get("output_kind"), manifest_b.get("output_kind")
    column_a, column_b = manifest_a.get("output_column"), manifest_b.get("output_column")
    if (kind_a, column_a) != (kind_b, column_b):
        raise TableError(
            f"cannot compare {table_a}@{side_a.version} ({kind_a} column {column_a!r}, task {side_a.task}) with "
            f"{table_b}@{side_b.version} ({kind_b} column {column_b!r}, task {side_b.task}): outputs of different kinds or columns"
        )
    kind, column = str(kind_a), str(column_a)
    rows_a = _rows(table_a, side_a.version, kind, column)
    rows_b = _rows(table_b, side_b.version, kind, column)
    index_a, index_b = _shared(rows_a.column("key"), rows_b.column("key"))
    shared = len(index_a)
    keys = rows_a.column("key").take(index_a)
    out_a, out_b = rows_a.column(column).take(index_a), rows_b.column(column).take(index_b)
    tokens_a, tokens_b = rows_a.column("output_tokens").take(index_a), rows_b.column("output_tokens").take(index_b)
    if kind == "list":
        exact = pc.and_(pc.equal(_lengths(out_a), _lengths(out_b)), pc.equal(_joined(out_a), _joined(out_b)))
    else:
        exact = pc.equal(pc.fill_null(out_a, ""), pc.fill_null(out_b, ""))
    n_exact = int(pc.sum(exact).as_py() or 0)
    differ = pc.invert(exact)
    keys_d, a_d, b_d = keys.filter(differ), out_a.filter(differ), out_b.filter(differ)
    values: list[float] | None = None
    jaccard: dict[str, float | None] = {"mean": None, "median": None, "at_least_half": None, "same_set": None}
    if kind == "list":
        values = _jaccard_values(a_d, b_d)
        jaccard = _jaccard_measures(values, n_exact, shared)
    picked = _sample(keys_d, a_d, b_d, values, sample)
    return Comparison(
        a=side_a,
        b=side_b,
        output_kind=kind,
        output_column=column,
        shared=shared,
        only_a=rows_a.num_rows - shared,
        only_b=rows_b.num_rows - shared,
        exact=n_exact,
        exact_rate=_rate(n_exact, shared),
        same_set_rate=jaccard["same_set"],
        jaccard_mean=jaccard["mean"],
        jaccard_median=jaccard["median"],
        jaccard_at_least_half=jaccard["at_least_half"],
        accuracy=_rate(n_exact, shared) if kind == "label" else None,
        confusion=_confusion(out_a, out_b) if kind == "label" else [],
        stats_a=_stats(kind, out_a, tokens_a),
        stats_b=_stats(kind, out_b, tokens_b),
        disagreements=shared - n_exact,
        sample=picked,
        seconds=round(time.perf_counter() - started, 3),
    )


def render_summary(c: Comparison) -> str:
    """A human-readable summary of a comparison (what ``bulkinfer compare`` prints)."""
    lines = []
    for name, side in (("A", c.a), ("B", c.b)):
        state = "published" if side.published else "not published"
        gates = {True: "gates passed", False: "gates FAILED", None: "gates unknown"}[side.gates_passed]
        lines.append(
            f"{name}: {side.table} @ {side.version}  model {side.model}  task {side.task} ({side.task_fingerprint})  "
            f"{side.keys} keys, {gates}, {state}"
        )
    if c.a.task_fingerprint != c.b.task_fingerprint:
        lines.append("   (the task specs differ: prompts or parsing were not the same)")
    lines.append(f"keys: {c.shared} shared, {c.only_a} only in A, {c.only_b} only in B")
    if not c.shared:
        lines.append("no shared keys: nothing to compare")
        return "\n".join(lines)
    lines.append(f"exact agreement: {c.exact}/{c.shared} ({_pct(c.exact_rate)})")
    sa, sb = c.stats_a, c.stats_b
    if c.output_kind == "list":
        lines.append(
            f"jaccard of item sets: mean {c.jaccard_mean:.3f}, median {c.jaccard_median:.3f}, "
            f">= 0.5 on {_pct(c.jaccard_at_least_half)}, same set on {_pct(c.same_set_rate)}"
        )
        lines.append(f"items per row: A {sa.mean_items:.2f}, B {sb.mean_items:.2f}")
    else:
        lines.append(f"label agreement (accuracy of B against A): {_pct(c.accuracy)}")
        off = [(a, b, n) for a, b, n in c.confusion if a != b][:10]
        if off:
            lines.append("most common confusions (A -> B): " + ", ".join(f"{a} -> {b} {n}" for a, b, n in off))
        lines.append("labels A: " + ", ".join(f"{k} {v}" for k, v in sa.labels.items()))
        lines.append("labels B: " + ", ".join(f"{k} {v}" for k, v in sb.labels.items()))
    lines.append(f"empty: A {_pct(sa.empty_rate)}, B {_pct(sb.empty_rate)}")
    if sa.mean_output_tokens is not None and sb.mean_output_tokens is not None:
        lines.append(f"output tokens per row: A {sa.mean_output_tokens:.1f}, B {sb.mean_output_tokens:.1f}")
    lines.append(f"disagreements: {c.disagreements}" + (f"; a sample of {len(c.sample)} (by key hash):" if c.sample else ""))
    for d in c.sample:
        lines.append(f"  {d.key!r}" + (f"  jaccard {d.jaccard:.2f}" if d.jaccard is not None else ""))
        lines.append(f"    A: {_show(d.a)}")
        lines.append(f"    B: {_show(d.b)}")
    return "\n".join(lines)


def _side(table: str, version: str | None) -> tuple[Side, dict[str, Any]]:
    name, manifest = layout.resolve_version(table, version)
    passed = manifest.get("gates", {}).get("passed")
    side = Side(
        table=table,
        version=name,
        published=layout.read_current(table) == name,
        gates_passed=passed if isinstance(passed, bool) else None,
        model=str(manifest.get("model", "")),
        model_digest=str(manifest.get("model_digest", "")),
        task=str(manifest.get("task", "")),
        task_fingerprint=str(manifest.get("task_fingerprint", "")),
        finished_at=str(manifest.get("finished_at", "")),
        keys=int(manifest.get("counts", {}).get("keys", 0)),
    )
    return side, manifest


def _rows(table: str, version: str, kind: str, column: str) -> pa.Table:
    rows = layout.read_shards(layout.version_dir(table, version), layout.PREDICTIONS, ["key", column, "output_tokens"])
    if rows is not None:
        return rows
    output_type = pa.list_(pa.string()) if kind == "list" else pa.string()
    return pa.table({"key": pa.array([], pa.string()), column: pa.array([], output_type), "output_tokens": pa.array([], pa.int32())})


def _shared(keys_a: pa.ChunkedArray, keys_b: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """Row numbers in A and in B of every key both hold (an Arrow hash join; keys are unique per version)."""
    left = pa.table({"key": keys_a, "_a": pa.array(range(len(keys_a)), pa.int64())})
    right = pa.table({"key": keys_b, "_b": pa.array(range(len(keys_b)), pa.int64())})
    joined = left.join(right, keys="key", join_type="inner").combine_chunks()
    return joined.column("_a"), joined.column("_b")


def _lengths(lists: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(pc.list_value_length(lists), 0)


def _joined(lists: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(pc.binary_join(lists, _UNIT_SEPARATOR), "")


def _jaccard_values(out_a: pa.ChunkedArray, out_b: pa.ChunkedArray) -> list[float]:
    """Jaccard of the normalised item sets, row by row (both empty: 1, one empty: 0)."""
    norm_a, norm_b = _normalised_items(out_a), _normalised_items(out_b)
    values: list[float] = []
    for start in range(0, len(norm_a), _SLICE):
        for a, b in zip(norm_a.slice(start, _SLICE).to_pylist(), norm_b.slice(start, _SLICE).to_pylist(), strict=True):
            set_a, set_b = set(a or ()), set(b or ())
            union = len(set_a | set_b)
            values.append(len(set_a & set_b) / union if union else 1.0)
    return values


def _jaccard_measures(values: list[float], n_exact: int, shared: int) -> dict[str, float | None]:
    """Measures over all shared keys; ``values`` holds the rows that are not identical (identical ones have Jaccard 1)."""
    if not shared:
        return {"mean": None, "median": None, "at_least_half": None, "same_set": None}
    everything = pa.concat_arrays([pa.array(values, pa.float64()), pa.array([1.0] * n_exact, pa.float64())])
    median = pc.quantile(everything, q=0.5, interpolation="midpoint")[0].as_py()
    return {
        "mean": round((sum(values) + n_exact) / shared, 4),
        "median": round(median, 4),
        "at_least_half": round((sum(1 for v in values if v >= 0.5) + n_exact) / shared, 4),
        "same_set": round((sum(1 for v in values if v == 1.0) + n_exact) / shared, 4),
    }


# normalize_key on ASCII text, as Arrow kernels: drop ASCII control characters, lower-case,
# collapse what str.split() calls whitespace (\t-\r, \x1c-\x1f, space), trim.
_ASCII_DROP = r"[\x00-\x08\x0e-\x1b\x7f]"
_ASCII_SPACE = r"[\t-\r\x1c-\x1f ]+"


def _normalised_items(lists: pa.ChunkedArray) -> pa.ChunkedArray:
    """Every list item through ``normalize_key``: ASCII items by Arrow kernels, the rest by the function itself."""
    return pa.chunked_array([_normalise_chunk(chunk) for chunk in lists.chunks], lists.type)


def _normalise_chunk(lists: pa.ListArray) -> pa.ListArray:
    offsets = lists.offsets
    first = offsets[0].as_py()
    items = lists.values.slice(first, offsets[-1].as_py() - first)
    lowered = pc.ascii_lower(pc.replace_substring_regex(items, _ASCII_DROP, ""))
    normalised = pc.utf8_trim(pc.replace_substring_regex(lowered, _ASCII_SPACE, " "), " ")
    not_ascii = pc.invert(pc.fill_null(pc.string_is_ascii(items), True))
    if pc.any(not_ascii).as_py():
        others = [normalize_key(item) for item in items.filter(not_ascii).to_pylist()]
        normalised = pc.replace_with_mask(normalised, not_ascii, pa.array(others, pa.string()))
    return pa.ListArray.from_arrays(pc.subtract(offsets, first), normalised, mask=lists.is_null())


def _sample(
    keys: pa.ChunkedArray, out_a: pa.ChunkedArray, out_b: pa.ChunkedArray, jaccard: list[float] | None, size: int
) -> tuple[Disagreement, ...]:
    """The disagreements whose key hashes are smallest: the same ones on every rerun, in any row order."""
    if not size or not len(keys):
        return ()
    hashes = [hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest() for key in keys.to_pylist()]
    picked = heapq.nsmallest(size, range(len(hashes)), key=hashes.__getitem__)
    rows = pa.array(picked, pa.int64())
    return tuple(
        Disagreement(key=k, a=a, b=b, jaccard=None if jaccard is None else round(jaccard[i], 4))
        for i, k, a, b in zip(picked, keys.take(rows).to_pylist(), out_a.take(rows).to_pylist(), out_b.take(rows).to_pylist(), strict=True)
    )


def _confusion(out_a: pa.ChunkedArray, out_b: pa.ChunkedArray) -> list[tuple[str, str, int]]:
    if not len(out_a):
        return []
    pairs = pa.table({"a": pc.fill_null(out_a, ""), "b": pc.fill_null(out_b, "")}).group_by(["a", "b"]).aggregate([("a", "count")])
    counted = zip(pairs.column("a").to_pylist(), pairs.column("b").to_pylist(), pairs.column("a_count").to_pylist(), strict=True)
    return sorted(((a, b, int(n)) for a, b, n in counted), key=lambda t: (-t[2], t[0], t[1]))[:_CONFUSION_PAIRS]


def _stats(kind: str, out: pa.ChunkedArray, tokens: pa.ChunkedArray) -> OutputStats:
    n = len(out)
    mean_tokens = pc.mean(tokens).as_py() if n else None
    if kind == "list":
        lengths = _lengths(out)
        empty = int(pc.sum(pc.equal(lengths, 0)).as_py() or 0) if n else 0
        mean_items = pc.mean(lengths).as_py() if n else None
        labels: dict[str, int] = {}
    else:
        filled = pc.fill_null(out, "")
        empty = int(pc.sum(pc.equal(filled, "")).as_py() or 0) if n else 0
        mean_items = None
        counts = pc.value_counts(filled) if n else pa.array([], pa.struct([("values", pa.string()), ("counts", pa.int64())]))
        pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
        labels = dict(sorted(((v, int(c)) for v, c in pairs), key=lambda t: (-t[1], t[0])))
    return OutputStats(
        empty_rate=_rate(empty, n),
        mean_items=None if mean_items is None else round(mean_items, 4),
        mean_output_tokens=None if mean_tokens is None else round(mean_tokens, 4),
        labels=labels,
    )


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, list):
        return ", ".join(value) if value else "(empty)"
    return str(value) or "(empty)"
