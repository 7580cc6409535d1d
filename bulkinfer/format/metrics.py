"""A run's figures in the Prometheus text format, for node-exporter's textfile collector.

One file per run, ``metrics.prom`` in the version directory, and optionally a copy
under a fixed name in the collector's directory (``--metrics_dir``), replaced by
every run of the table through a temporary file and a rename, so the collector
never reads half a file.
"""

from __future__ import annotations

import calendar
import os
import re
import time
from typing import Any

METRICS_NAME = "metrics.prom"
"""The metrics file in the version directory."""


def textfile_name(table: str) -> str:
    """The file name in a collector directory for ``table``: ``bulkinfer_<table directory's name>.prom``."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", table.rstrip("/").rsplit("/", 1)[-1]) or "table"
    return f"bulkinfer_{name}.prom"


def render_metrics(table: str, manifest: dict[str, Any], rates: dict[str, float]) -> str:
    """The run's counts, rates, quality, gate result and duration in the Prometheus text format.

    Args:
        table: the table directory (the ``table`` label).
        manifest: the version's manifest.
        rates: ``prompts_per_second`` and ``output_tokens_per_second`` of the engine stage.
    """
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    labels = {"table": table, "task": str(manifest.get("task", ""))}
    names = list(labels)
    gauges: dict[str, Gauge] = {}

    def gauge(name: str, doc: str, value: float, **extra: str) -> None:
        metric = gauges.get(name)
        if metric is None:
            metric = gauges[name] = Gauge(name, doc, [*names, *extra], registry=registry)
        metric.labels(**labels, **extra).set(value)

    info = Gauge(
        "bulkinfer_run_info", "The run: version, model and whether it was published (1)", [*names, "version", "model"], registry=registry
    )
    info.labels(**labels, version=str(manifest.get("version")), model=str(manifest.get("model"))).set(1)
    for count, value in sorted((manifest.get("counts") or {}).items()):
        if value is not None:
            gauge("bulkinfer_run_rows", "Row and key counts of the run's version, by count", float(value), count=count)
    for reason, value in sorted((manifest.get("dead_letter_reasons") or {}).items()):
        gauge("bulkinfer_run_dead_lettered_rows", "Dead-lettered input rows, by reason", float(value), reason=reason)
    for measure, value in sorted((manifest.get("quality") or {}).items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            gauge("bulkinfer_run_quality", "Quality figures of the version (the gates' inputs)", float(value), measure=measure)
    gates = manifest.get("gates") or {}
    gauge(
        "bulkinfer_run_gates_passed",
        "1 when every quality gate passed (the version may be published), else 0",
        float(bool(gates.get("passed"))),
    )
    gauge("bulkinfer_run_gates_failed", "Quality gates that failed", float(len(gates.get("failed") or [])))
    gauge("bulkinfer_run_duration_seconds", "Wall time of the run up to its manifest", float(manifest.get("wall_seconds") or 0.0))
    for rate, value in sorted(rates.items()):
        gauge(f"bulkinfer_run_{rate}", f"Engine-stage {rate.replace('_', ' ')} over the run", float(value))
    finished = manifest.get("finished_at")
    finished_ts = calendar.timegm(time.strptime(finished, "%Y-%m-%dT%H:%M:%SZ")) if finished else time.time()
    gauge("bulkinfer_run_finished_timestamp_seconds", "When the run finished (Unix time): alert when it grows old", float(finished_ts))
    return generate_latest(registry).decode("utf-8")


def write_textfile(directory: str, table: str, text: str) -> str:
    """Writes ``text`` as the table's file in a (local) collector directory: temporary file, then rename.

    Returns:
        The file's path.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, textfile_name(table))
    # node-exporter reads every *.prom file: the temporary one must not end in .prom.
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)
    return path
