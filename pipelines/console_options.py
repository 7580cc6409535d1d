"""Flags of ``bulkinfer run`` about operating it: the terminal, progress, metrics and the dry run.

Parsed alongside the job's own flags (:class:`bulkinfer.pipelines.cache_job.CacheJobOptions`);
kept apart from them because the command line, not the pipeline, acts on most of them.
"""

from __future__ import annotations

from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, StandardOptions

DRY_RUN_FLAG = "--dry_run"
"""``bulkinfer run --dry_run``: read by the command line itself (Beam's TestOptions own a ``--dry_run`` that takes a value)."""

DRY_RUN_HELP = "count keys, reuse, prompts and prompt tokens and estimate engine time and cost; starts no engine, writes no version"


class ConsoleOptions(PipelineOptions):
    """Flags of ``bulkinfer run`` about the terminal, progress, metrics and dry runs (parsed alongside the job's)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument(
            "--verbose", action="store_true", help="engine, torch and Beam log lines on stderr instead of the version's run.log"
        )
        parser.add_argument(
            "--progress",
            choices=("auto", "bar", "lines", "off"),
            default="auto",
            help="progress on stderr: a live bar (bar), a plain line every --progress_interval seconds (lines), or off; "
            "auto (default): bar on a terminal, lines otherwise",
        )
        parser.add_argument("--progress_interval", type=float, default=30.0, help="seconds between plain progress lines (default 30)")
        parser.add_argument("--progress_dir", default=None, help="(internal) directory of the run's per-process counter files")
        parser.add_argument(
            "--throughput",
            default=None,
            help="dry run: a `bulkinfer bench --out` JSON or a table directory whose published run's rate to estimate with "
            "(default: the --output table's published run)",
        )
        parser.add_argument("--gpu_hour_price", type=float, default=None, help="dry run: price of one GPU (engine) hour, for the cost")
        parser.add_argument("--estimate_out", default=None, help="dry run: also write the estimate as JSON to this file")
        parser.add_argument(
            "--metrics_dir",
            default=None,
            help="also write the run's Prometheus metrics as bulkinfer_<table>.prom here (node-exporter's textfile collector directory)",
        )


def counts_locally(options: PipelineOptions) -> bool:
    """Whether the runner's workers share this host, so that their progress counter files (a
    local directory) can be read by the command line: the in-process DirectRunner, and a
    PortableRunner whose job service runs here (``--job_endpoint embed``) on an SDK worker
    pool on this machine (``--environment_type EXTERNAL --environment_config localhost:PORT``)."""
    if options.view_as(StandardOptions).runner in (None, "DirectRunner", "FnApiRunner"):
        return True
    pool = embedded_pool(options)
    return pool is not None and pool.rpartition(":")[0].strip("[]") in ("localhost", "127.0.0.1", "::1")


def embedded_pool(options: PipelineOptions) -> str | None:
    """The SDK worker pool this process's embedded job service calls (``--job_endpoint embed
    --environment_type EXTERNAL``): its ``HOST:PORT`` ("" when not given), else None."""
    portable = options.view_as(PortableOptions)
    if portable.job_endpoint != "embed" or (portable.environment_type or "").upper() != "EXTERNAL":
        return None
    return portable.lookup_environment_option("external_service_address") or portable.environment_config or ""
