"""The run report: one self-contained HTML page per version, with plots, for people to look at.

``report.html`` is written beside the manifest of every version a run writes
(published or held back by a gate), and on demand by ``bulkinfer report``. The page
needs nothing but itself: the plots are matplotlib figures inlined as SVG (text
drawn as paths, no fonts), the styles inline, no script, so it opens offline and
from a mail attachment.
"""

from __future__ import annotations

import html
import io
import json
from typing import TYPE_CHECKING, Any

from bulkinfer.errors import TableError
from bulkinfer.format import fs, layout
from bulkinfer.format.progress import PROGRESS_NAME

if TYPE_CHECKING:
    import pyarrow as pa

REPORT_NAME = "report.html"
"""The report's file name in the version directory."""

SAMPLE_ROWS = 20
"""Rows shown in the sample of rows and in the examples of changed answers."""


def write_report(table: str, version: str | None, out: str) -> str:
    """Writes the report of ``version`` (default: the published one) of ``table`` to ``out``; returns the version's name.

    Raises:
        TableError: no such table or version.
    """
    name, _ = layout.resolve_version(table, version)
    layout.write_text(out, render_report(table, name))
    return name


def render_report(table: str, version: str) -> str:
    """The HTML report of one version whose manifest is written.

    Args:
        table: the table directory.
        version: the version's name.

    Raises:
        TableError: the version has no manifest.
    """
    vdir = layout.version_dir(table, version)
    if not fs.exists(fs.join(vdir, layout.MANIFEST)):
        raise TableError(f"{table} has no version {version!r} with a manifest")
    manifest = layout.read_manifest(vdir)
    progress_path = fs.join(vdir, PROGRESS_NAME)
    progress = json.loads(layout.read_text(progress_path)) if fs.exists(progress_path) else {}
    output_column = manifest.get("output_column", "output")
    # Each part reads only its columns: the token counts whole, the sample a row group at a time, the answers only
    # where churn is to be shown; never every column of every row at once.
    tokens = _read_rows(vdir, layout.PREDICTIONS, ["prompt_tokens", "output_tokens"])
    sections = [
        _header(table, manifest),
        _section("Row funnel", _funnel_plot(manifest), _counts_table(manifest)),
        _section("Dead-letter reasons", _bars_plot(manifest.get("dead_letter_reasons") or {}, "input rows"), ""),
        _section("Quality against the gates", _quality_plot(manifest), _quality_table(manifest)),
        _section("Churn against the previous version", "", _churn(table, manifest, vdir, output_column)),
        _section("Prompt and output lengths", _token_plots(tokens), ""),
        _section("Throughput over the run", _throughput_plot(progress), _rates(progress)),
        _section("Language mix", _bars_plot((manifest.get("languages") or {}).get("keys_by_language") or {}, "keys"), ""),
        _section("Sample of rows", "", _sample(vdir, output_column)),
    ]
    title = f"bulkinfer run report: {manifest.get('task', '')} {version}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #176b2c; font-weight: bold; } .fail { color: #b00020; font-weight: bold; } .muted { color: #777; }
figure { margin: 0.5em 0; } svg { max-width: 100%; height: auto; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _section(title: str, figure: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{figure}{body or ''}</section>"


def _read_rows(vdir: str, kind: str, columns: list[str]) -> pa.Table | None:
    paths = layout.shard_paths(vdir, kind)
    if not paths:
        return None
    import pyarrow as pa

    tables = []
    for path in paths:
        schema, _ = layout.parquet_schema(path)
        tables.append(layout.read_parquet(path, [c for c in columns if c in schema.names]))
    return pa.concat_tables(tables, promote_options="default")


def _svg(figure: Any) -> str:
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path"}):  # text as outlines: the page needs no font
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return "<figure>" + text[text.index("<svg") :] + "</figure>"


def _figure(height: float = 2.6) -> tuple[Any, Any]:
    # A bare Figure, not pyplot's: nothing registered to close, nothing global changed.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, height))
    return figure, figure.subplots()


def _header(table: str, manifest: dict[str, Any]) -> str:
    gates = manifest.get("gates") or {}
    verdict = '<span class="pass">gates passed</span>' if gates.get("passed") else '<span class="fail">gates failed: not published</span>'
    facts = [
        ("table", table),
        ("version", manifest.get("version")),
        ("task", manifest.get("task")),
        ("model", manifest.get("model")),
        ("adapter", manifest.get("adapter") or "none"),
        ("input", manifest.get("input")),
        ("previous version", manifest.get("previous_version") or "none"),
        ("started", manifest.get("started_at")),
        ("finished", manifest.get("finished_at")),
        ("wall time", f"{manifest.get('wall_seconds', 0):,.1f} s"),
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    return f"<h1>{_e(manifest.get('task'))} · {_e(manifest.get('version'))} · {verdict}</h1><table>{rows}</table>"


def _funnel_plot(manifest: dict[str, Any]) -> str:
    counts = manifest.get("counts") or {}
    generated = counts.get("generated") or 0
    stages = [
        ("input rows", counts.get("rows_in", 0)),
        ("rows behind keys", counts.get("rows_in_table", 0)),
        ("rows dead-lettered", counts.get("rows_dead", 0)),
        ("rows not sampled", counts.get("rows_not_sampled", 0)),
        ("keys in table", counts.get("keys", 0)),
        ("keys reused", counts.get("reused", 0)),
        ("keys generated", generated),
        ("dead-letter records", counts.get("dead_letter_records", 0)),
    ]
    return _hbars([s for s, _ in stages], [v or 0 for _, v in stages], ["#4c72b0"] * 4 + ["#55a868"] * 3 + ["#c44e52"])


def _hbars(labels: list[str], values: list[float], colors: list[str] | str = "#4c72b0") -> str:
    figure, axes = _figure(0.45 * len(labels) + 0.8)
    positions = list(range(len(labels)))[::-1]
    axes.barh(positions, values, color=colors)
    axes.set_yticks(positions, labels)
    for position, value in zip(positions, values, strict=True):
        axes.annotate(f"{value:,.0f}", (value, position), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    # Every bar carries its value: a value axis would repeat it (and its ticks are most of the drawing time).
    axes.set_xticks([])
    axes.spines[["top", "right", "bottom"]].set_visible(False)
    return _svg(figure)


def _bars_plot(values: dict[str, int], unit: str, top: int = 25) -> str:
    if not values:
        return f'<p class="muted">none ({_e(unit)})</p>'
    items = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(items) > top:
        items = [*items[: top - 1], ("(others)", sum(v for _, v in items[top - 1 :]))]
    return _hbars([k for k, _ in items], [v for _, v in items]) + f'<p class="muted">{_e(unit)}</p>'


def _counts_table(manifest: dict[str, Any]) -> str:
    counts = manifest.get("counts") or {}
    rows = "".join(f'<tr><th>{_e(k)}</th><td class="n">{_e("-" if v is None else f"{v:,}")}</td></tr>' for k, v in counts.items())
    return f"<table>{rows}</table>"


def _gate_rows(manifest: dict[str, Any]) -> list[tuple[str, str, Any, Any, bool | None]]:
    """(gate, measure, value, threshold, passed) per gate with a threshold."""
    quality = manifest.get("quality") or {}
    failed = {f["gate"] for f in (manifest.get("gates") or {}).get("failed") or []}
    out = []
    for gate, threshold in ((manifest.get("gates") or {}).get("thresholds") or {}).items():
        if threshold is None or not isinstance(threshold, (int, float)):
            continue
        measure = gate.split("_", 1)[1] if gate.startswith(("min_", "max_")) else gate
        value = quality.get(measure)
        out.append((gate, measure, value, threshold, None if value is None else gate not in failed))
    return out


def _quality_plot(manifest: dict[str, Any]) -> str:
    gates = [g for g in _gate_rows(manifest) if isinstance(g[2], (int, float))]
    if not gates:
        return ""
    figure, axes = _figure(0.5 * len(gates) + 0.8)
    positions = list(range(len(gates)))[::-1]
    axes.barh(positions, [g[2] for g in gates], color=["#55a868" if g[4] else "#c44e52" for g in gates])
    for position, (gate, _, _, threshold, _) in zip(positions, gates, strict=True):
        axes.plot([threshold, threshold], [position - 0.4, position + 0.4], color="black", linewidth=2)
        axes.annotate(gate, (threshold, position + 0.42), fontsize=7, ha="center")
    axes.set_yticks(positions, [g[1] for g in gates])
    axes.set_xlim(0, 1.05)
    axes.set_xlabel("value (bar) against threshold (black line)")
    axes.spines[["top", "right"]].set_visible(False)
    return _svg(figure)


def _quality_table(manifest: dict[str, Any]) -> str:
    rows = []
    for gate, measure, value, threshold, passed in _gate_rows(manifest):
        verdict = (
            '<span class="muted">not measured</span>'
            if passed is None
            else ('<span class="pass">pass</span>' if passed else '<span class="fail">fail</span>')
        )
        numbers = f'<td class="n">{_e(value)}</td><td>{_e(gate)}</td><td class="n">{_e(threshold)}</td>'
        rows.append(f"<tr><td>{_e(measure)}</td>{numbers}<td>{verdict}</td></tr>")
    others = {k: v for k, v in (manifest.get("quality") or {}).items() if k not in {g[1] for g in _gate_rows(manifest)}}
    rows += [f'<tr><td>{_e(k)}</td><td class="n">{_e(v)}</td><td colspan="3" class="muted">no gate</td></tr>' for k, v in others.items()]
    return "<table><tr><th>measure</th><th>value</th><th>gate</th><th>threshold</th><th>result</th></tr>" + "".join(rows) + "</table>"


def _as_text(column: Any) -> Any:
    """A list or label column as comparable strings (list items joined with ", ", as people read them)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        return pc.binary_join(column, ", ")
    return pc.cast(column, pa.string())


def _churn(table: str, manifest: dict[str, Any], vdir: str, output_column: str) -> str:
    quality = manifest.get("quality") or {}
    previous = manifest.get("previous_version")
    if not previous or not layout.shard_paths(vdir, layout.PREDICTIONS):
        return '<p class="muted">no previous version to compare with</p>'
    summary = (
        f"<p>churn rate {_e(quality.get('churn_rate'))} over {_e(quality.get('churn_compared', 0))} keys present in both "
        f"(previous version {_e(previous)})</p>"
    )
    if quality.get("churn_rate") == 0 and quality.get("churn_compared"):
        return summary + "<p>no answer changed</p>"  # measured so: no need to read and join the previous version
    previous_dir = layout.version_dir(table, previous)
    before = _read_rows(previous_dir, layout.PREDICTIONS, ["key", output_column]) if fs.exists(previous_dir) else None
    if before is None or output_column not in before.column_names:
        return summary + '<p class="muted">the previous version is gone or has another output column</p>'
    rows = _read_rows(vdir, layout.PREDICTIONS, ["key", output_column])
    import pyarrow as pa
    import pyarrow.compute as pc

    # Arrow joins carry no list columns: compare (and show) the answers as text.
    now = pa.table({"key": rows["key"], "after": pc.fill_null(_as_text(rows[output_column]), "")})
    then = pa.table({"key": before["key"], "before": pc.fill_null(_as_text(before[output_column]), "")})
    joined = now.join(then, "key", join_type="inner")
    changed = joined.filter(pc.not_equal(joined["after"], joined["before"]))
    if changed.num_rows == 0:
        return summary + "<p>no answer changed</p>"
    changed = changed.take(pc.sort_indices(changed, [("key", "ascending")])).slice(0, SAMPLE_ROWS)
    body = "".join(f"<tr><td>{_e(r['key'])}</td><td>{_e(r['before'])}</td><td>{_e(r['after'])}</td></tr>" for r in changed.to_pylist())
    return summary + f"<table><tr><th>key</th><th>before</th><th>after</th></tr>{body}</table>"


def _token_plots(rows: pa.Table | None) -> str:
    if rows is None or "prompt_tokens" not in rows.column_names:
        return '<p class="muted">no rows</p>'
    out = ""
    for column, color in (("prompt_tokens", "#4c72b0"), ("output_tokens", "#dd8452")):
        import numpy as np
        import pyarrow.compute as pc

        # A numpy array, not a Python list: matplotlib converts a list of a million counts element by element.
        values = pc.drop_null(rows.column(column)).to_numpy()
        if not len(values):
            continue
        figure, axes = _figure(2.2)
        axes.hist(values, bins=min(50, max(5, len(np.unique(values)))), color=color)
        axes.locator_params(nbins=5)
        axes.set_xlabel(f"{column.replace('_', ' ')} per key")
        axes.set_ylabel("keys")
        axes.spines[["top", "right"]].set_visible(False)
        out += _svg(figure)
    return out or '<p class="muted">no token counts</p>'


def _throughput_plot(progress: dict[str, Any]) -> str:
    timeline = progress.get("timeline") or []
    points = [(p["t"], p["generated"], p["output_tokens"]) for p in timeline]
    rates = []
    for (t0, g0, o0), (t1, g1, o1) in zip(points, points[1:], strict=False):
        if t1 > t0:
            rates.append((t1, (g1 - g0) / (t1 - t0), (o1 - o0) / (t1 - t0)))
    if len(rates) < 2:
        return '<p class="muted">no timeline (recorded by the progress display of <code>bulkinfer run</code>)</p>'
    figure, axes = _figure(2.4)
    axes.plot([r[0] for r in rates], [r[1] for r in rates], color="#4c72b0", label="prompts/s")
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("prompts/s")
    twin = axes.twinx()
    twin.plot([r[0] for r in rates], [r[2] for r in rates], color="#dd8452", label="output tokens/s", alpha=0.7)
    twin.set_ylabel("output tokens/s")
    figure.legend(loc="upper right", fontsize=8)
    return _svg(figure)


def _rates(progress: dict[str, Any]) -> str:
    rates = progress.get("rates") or {}
    if not rates:
        return ""
    return (
        f"<p>engine stage: {rates.get('prompts_per_second', 0):,.2f} prompts/s, "
        f"{rates.get('output_tokens_per_second', 0):,.1f} output tokens/s over {progress.get('engine_seconds', 0):,.1f} s</p>"
    )


def _sample(vdir: str, output_column: str) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc

    # The smallest keys: the same sample every time the report is rendered; kept a row group at a time.
    wanted = ["key", "query", "language", output_column, "source_rows", "output_tokens", "run_id"]
    sample, rows = None, 0
    for batch in layout.iter_shard_batches(vdir, layout.PREDICTIONS, wanted):
        rows += batch.num_rows
        table = pa.Table.from_batches([batch])
        candidates = table if sample is None else pa.concat_tables([sample, table], promote_options="permissive")
        order = [(name, "ascending") for name in ("key", "language") if name in candidates.column_names]
        sample = candidates.take(pc.select_k_unstable(candidates, SAMPLE_ROWS, order))
    if sample is None or rows == 0:
        return '<p class="muted">no rows</p>'
    sample = sample.take(pc.sort_indices(sample, [(name, "ascending") for name in ("key", "language") if name in sample.column_names]))
    columns = [c for c in wanted if c in sample.column_names]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(_cell(r[c]))}</td>" for c in columns) + "</tr>" for r in sample.select(columns).to_pylist())
    return f"<p>{rows:,} keys; the first {min(SAMPLE_ROWS, rows)} by key:</p><table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> Any:
    return ", ".join(map(str, value)) if isinstance(value, list) else value
