"""Running the cache job's tables: the lock, the pipeline, the manifest, the gates and the publish, in that order.

The job file (:mod:`bulkinfer.pipelines.cache_job`) says which stages make the
pipeline; this module runs it once per output table and publishes what passes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from bulkinfer.console import attach_log
from bulkinfer.errors import ConfigError, GateError
from bulkinfer.format import fs, layout
from bulkinfer.format.lock import TableLock
from bulkinfer.format.publish import check_gates, clear_leftovers, drop_checkpoints, publish_version
from bulkinfer.lookup.match import drop_saved_claims
from bulkinfer.models.beam_inference import ModelHandler
from bulkinfer.models.vllm_handler import release_shared_engine
from bulkinfer.pipelines.console_options import ConsoleOptions, counts_locally
from bulkinfer.pipelines.plan import TablePlan, for_workers, in_process_runner, make_handler
from bulkinfer.pipelines.run_record import record_run
from bulkinfer.pipelines.summary import summarise

if TYPE_CHECKING:  # the options class lives with the job it configures
    from bulkinfer.pipelines.cache_job import CacheJobOptions

_LOG = logging.getLogger(__name__)

BuildPipeline = Callable[[beam.Pipeline, "CacheJobOptions", TablePlan, ModelHandler, "str | None", "str | None"], None]
"""Adds a job's stages to a pipeline: (pipeline, job flags, plan, handler, version to reuse from, progress directory)."""


def run_tables(
    options: PipelineOptions,
    job: CacheJobOptions,
    plans: list[TablePlan],
    build: BuildPipeline,
    model_handler: ModelHandler | None,
    test_pipeline: beam.Pipeline | None,
) -> dict[str, Any]:
    """Builds, runs and publishes one table per plan, one after the other, under each table's lock.

    For each table: take the lock, read the published version, clear leftovers of
    this run id, ``build`` the pipeline and run it, write the manifest and run
    record, check the gates, then publish. Several plans (adapters) share one engine.

    Args:
        options: the pipeline options to run with.
        job: the parsed job flags.
        plans: one plan per output table.
        build: adds the job's stages to a pipeline (the job file's wiring).
        model_handler: replaces the vLLM handler (tests use a fake one).
        test_pipeline: a ``TestPipeline`` to run on instead of a new pipeline.

    Returns:
        The published manifest; with several plans, ``{"tables": {table: manifest}}``.

    Raises:
        GateError: a gate held a version back (with several plans: after the others
            were published), carrying the run's manifests.
    """
    with _progress_dir(options) as progress_dir:
        if len(plans) == 1:
            handler = model_handler or make_handler(job, plans[0], share_as=None)
            return _run_table(options, job, plans[0], build, handler, test_pipeline, progress_dir)
        share_as = f"cache_job-{os.getpid()}-{id(plans)}"
        manifests: dict[str, Any] = {}
        failures: list[str] = []
        try:
            for plan in plans:
                handler = model_handler or make_handler(job, plan, share_as=share_as)
                try:
                    # Each table counts into its own subdirectory (its report's figures); the display sums them all.
                    table_progress = os.path.join(progress_dir, f"table-{len(manifests) + len(failures)}") if progress_dir else None
                    if table_progress:
                        os.makedirs(table_progress, exist_ok=True)
                    manifests[plan.output] = _run_table(options, job, plan, build, handler, test_pipeline, table_progress)
                except GateError as e:
                    failures.append(str(e))
                    manifests[plan.output] = e.manifests[None]
        finally:
            release_shared_engine(share_as)
        if failures:
            raise GateError("; ".join(failures), manifests=manifests)
        return {"tables": manifests}


@contextmanager
def _progress_dir(options: PipelineOptions) -> Iterator[str | None]:
    """Where counting steps write live progress: per-process files in a local directory, so
    only where the workers share this host (None elsewhere); a temporary one unless given."""
    if not counts_locally(options):
        yield None
        return
    given = options.view_as(ConsoleOptions).progress_dir
    progress_dir = given or tempfile.mkdtemp(prefix="bulkinfer-progress-")
    try:
        yield progress_dir
    finally:
        if not given:
            shutil.rmtree(progress_dir, ignore_errors=True)


def _run_table(
    options: PipelineOptions,
    job: CacheJobOptions,
    plan: TablePlan,
    build: BuildPipeline,
    handler: ModelHandler,
    test_pipeline: beam.Pipeline | None,
    progress_dir: str | None,
) -> dict[str, Any]:
    started = time.time()
    output, run_id = plan.output, plan.provenance.run_id
    with TableLock(output, run_id) as lock:
        published = layout.published_version(output)
        previous = published[0] if published else None
        if published is not None and previous == run_id:
            return _already_published(plan, published[1])
        clear_leftovers(plan.vdir)
        attach_log(plan.vdir)
        staged = for_workers(plan)
        reuse_from = None if job.full or previous is None else layout.version_dir(staged.output, previous)
        pipeline = test_pipeline or beam.Pipeline(runner=in_process_runner(options), options=options)
        build(pipeline, job, staged, handler, reuse_from, progress_dir)
        try:
            result = pipeline.run()
            result.wait_until_finish()
        finally:  # what the shuffles carried by name; a failed run's leftovers go with clear_leftovers too
            spill = layout.spill_dir(plan.vdir)
            if fs.exists(spill):
                fs.delete([spill])
        manifest = summarise(plan, job, result, started, previous)
        layout.write_manifest(plan.vdir, manifest)
        record_run(plan, manifest, progress_dir, options)
        try:
            check_gates(manifest, output, job.task, previous)
        except GateError:
            drop_saved_claims(plan.vdir)  # kept for a publish that will not happen
            raise
        lock.check()
        pruned = publish_version(output, run_id, keep=job.keep)
    _LOG.info("published %s version %s: %s (pruned %s)", output, run_id, manifest["counts"], pruned or "none")
    return manifest


def _already_published(plan: TablePlan, manifest: dict[str, Any]) -> dict[str, Any]:
    """The same run again after it published (a scheduler's retry): nothing to do but the cleanup it may have missed."""
    output, run_id = plan.output, plan.provenance.run_id
    if manifest.get("fingerprint") != plan.provenance.fingerprint:
        raise ConfigError(
            f"run id {run_id} is already the published version of {output}, made with another task, model or "
            f"engine (fingerprint differs); give a new --run_id"
        )
    drop_checkpoints(output)
    _LOG.info("%s version %s is already published by this run; nothing to do", output, run_id)
    return manifest
