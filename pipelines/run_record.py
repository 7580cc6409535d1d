"""What a run leaves beside its manifest for people and schedulers: progress figures, metrics, the HTML report.

Written for every version whose manifest was written, whether its gates passed or
not (a failed version is the one people most want to look at), before the gate
check decides whether it is published.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions

from bulkinfer.format import fs, layout
from bulkinfer.format.metrics import METRICS_NAME, render_metrics, write_textfile
from bulkinfer.format.progress import PROGRESS_NAME, TIMELINE_NAME, read_progress
from bulkinfer.pipelines.console_options import ConsoleOptions
from bulkinfer.pipelines.plan import TablePlan

_LOG = logging.getLogger(__name__)


def record_run(plan: TablePlan, manifest: dict[str, Any], progress_dir: str | None, options: PipelineOptions) -> None:
    """Writes ``progress.json``, ``metrics.prom`` and ``report.html`` beside the version's manifest.

    Args:
        plan: the table's plan.
        manifest: the version's manifest, as written.
        progress_dir: the run's progress directory, or None where the runner's workers do not share this host.
        options: the run's options (``--metrics_dir``).
    """
    progress = run_progress(progress_dir, manifest)
    layout.write_text(fs.join(plan.vdir, PROGRESS_NAME), json.dumps(progress) + "\n")
    metrics = render_metrics(plan.output, manifest, progress["rates"])
    layout.write_text(fs.join(plan.vdir, METRICS_NAME), metrics)
    metrics_dir = options.view_as(ConsoleOptions).metrics_dir
    if metrics_dir:
        write_textfile(metrics_dir, plan.output, metrics)
    from bulkinfer.tools.report import REPORT_NAME, render_report

    try:
        html = render_report(plan.output, manifest["version"])
    except Exception:  # the report is for people: a plotting failure must not cost the run its publish
        _LOG.exception("could not write %s for %s; the version is unaffected", REPORT_NAME, plan.vdir)
        return
    layout.write_text(fs.join(plan.vdir, REPORT_NAME), html)


def run_progress(progress_dir: str | None, manifest: dict[str, Any]) -> dict[str, Any]:
    """The run's progress figures: the summed counters, the engine's rates and the display's timeline."""
    snapshot = read_progress(progress_dir) if progress_dir else None
    data: dict[str, Any] = snapshot.to_dict() if snapshot is not None else {}
    generated = manifest["counts"].get("generated") or 0
    seconds = snapshot.engine_seconds if snapshot is not None else 0.0
    output_tokens = snapshot.counts["output_tokens"] if snapshot is not None else 0
    data["rates"] = {
        "prompts_per_second": round(generated / seconds, 3) if seconds > 0 else 0.0,
        "output_tokens_per_second": round(output_tokens / seconds, 3) if seconds > 0 else 0.0,
    }
    timeline_path = Path(progress_dir, TIMELINE_NAME) if progress_dir else None
    if timeline_path is not None and timeline_path.is_file():
        data["timeline"] = [json.loads(line) for line in timeline_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return data
