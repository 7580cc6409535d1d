"""The manifest of a version the cache job wrote: row accounting, counters, quality, provenance.

``manifest.json`` is what operators, ``bulkinfer versions`` and the lookup side read
about a version; this module assembles it from the plan, the flags and the finished
pipeline's metrics.
"""

from __future__ import annotations

import collections
import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from bulkinfer.format import layout, quality
from bulkinfer.format.manifest import account_rows
from bulkinfer.format.records import METRICS_NAMESPACE
from bulkinfer.keys import KEY_VERSION
from bulkinfer.lookup.match import match_summary
from bulkinfer.lookup.store import RowsDigest
from bulkinfer.pipelines.plan import TablePlan

if TYPE_CHECKING:  # the options class lives with the job it configures
    import pyarrow as pa

    from bulkinfer.pipelines.cache_job import CacheJobOptions


def summarise(plan: TablePlan, job: CacheJobOptions, result: PipelineResult, started: float, previous: str | None) -> dict[str, Any]:
    """The manifest of a version the job has written: counts, provenance, quality against the gates, languages.

    Args:
        plan: the table's plan.
        job: the parsed job flags.
        result: the finished pipeline (its metrics hold the engine and reuse counters).
        started: when the run started (seconds since the epoch).
        previous: the version the table serves now, for churn.

    Raises:
        AccountingError: the version's rows do not add up to the input.
    """
    task, provenance = plan.task, plan.provenance
    not_sampled = (read_counter(result, "rows_not_sampled") or 0) if job.sample is not None else 0
    # The answers are hashed first, a row group at a time: a version with the previous version's answers carries its
    # quality counts and match summary forward and never holds more of its rows than the accounting reads.
    answers = answers_digest(plan.vdir, task.output_column, provenance.fingerprint)
    before, same, earlier = None, None, None
    if previous is not None:
        previous_dir = layout.version_dir(plan.output, previous)
        earlier = layout.read_manifest(previous_dir)
        carries = quality.carries(earlier.get("quality")) and (task.output != "list" or earlier.get("match") is not None)
        if earlier.get("answers_digest") == answers and carries:
            same = earlier  # what depends on the answers alone (quality counts, the match summary) is carried forward
    answer_columns = [] if same else [task.output_column, "raw_output", "finish_reason"]
    account = account_rows(
        plan.vdir, task.output_column, provenance.run_id, plan.rows_in, not_sampled, len(task.target_languages) or 1, answer_columns
    )
    rows = account.rows
    if same is None and earlier is not None and earlier.get("output_column") == task.output_column:
        # Churn compares outputs of the same kind: only when the published version has this output column.
        before = layout.read_shards(
            previous_dir, layout.PREDICTIONS, ["key", task.output_column, *(["language"] if task.target_languages else [])]
        )
    measured = quality.measure(task, rows, account.dead_records, before, same_as=same["quality"] if same else None)
    failed = quality.failed_gates(task, measured)
    manifest = {
        "format": 1,
        "version": provenance.run_id,
        **provenance.columns(),
        "model_path": plan.engine.model,
        "adapter_path": plan.adapter.path if plan.adapter else None,
        "sample": job.sample,
        "input": job.input,
        "query_column": job.query_column,
        "output_kind": task.output,
        "output_column": task.output_column,
        "sampling": asdict(task.sampling),
        # The validated spec that produced this version: readers rebuild it with tasks.task_from_dict.
        "task_spec": asdict(task),
        "previous_version": previous,
        "full": bool(job.full),
        "counts": {
            "rows_in": plan.rows_in,
            "rows_in_table": account.rows_in_table,
            "rows_dead": account.rows_dead,
            "rows_not_sampled": not_sampled,
            "keys": account.keys,
            # With target_languages, keys counts key x language rows; concepts, the distinct keys.
            **({"concepts": account.concepts, "target_languages": account.target_languages} if task.target_languages else {}),
            "dead_letter_records": sum(account.dead_records.values()),
            "reused": account.reused,
            "reused_dead_letters": account.reused_dead,
            "resumed_from_checkpoints": read_counter(result, "resumed_from_checkpoints"),
            "generated": read_counter(result, "prompts_generated"),
            "engine_starts": read_counter(result, "engine_starts"),
        },
        "dead_letter_reasons": dict(sorted(account.dead_rows.items())),
        "quality": {name: round(value, 4) if isinstance(value, float) else value for name, value in measured.items()},
        "key_normalizer": KEY_VERSION,
        "languages": _language_summary(plan, job, rows, result),
        # What the match index built at publish holds: items, concepts, items several concepts claim.
        # After the quality measures, not beside them (a thread): 1.9 s less at 1M rows, but a peak of 2.4 GB, not 1.8.
        "match": _match(plan, rows, same),
        "answers_digest": answers,
        "gates": {"passed": not failed, "failed": failed, "thresholds": asdict(task.gates)},
        "started_at": _iso(started),
        "finished_at": _iso(time.time()),
        "wall_seconds": round(time.time() - started, 3),
    }
    return json.loads(json.dumps(manifest))  # exactly what readers of manifest.json will see


def answers_digest(vdir: str, output_column: str, fingerprint: str) -> str:
    """The digest of what a version's quality measures and match index are made from: each row's key, language,
    raw output, parsed output and finish reason, under the task fingerprint (the parser and examples); read from its
    prediction shards a row group at a time (:class:`bulkinfer.lookup.store.RowsDigest`)."""
    columns = ["language", "raw_output", output_column, "finish_reason"]
    digest = RowsDigest(columns, salt=f"{fingerprint}/{output_column}")
    for batch in layout.iter_shard_batches(vdir, layout.PREDICTIONS, ["key", *columns]):
        digest.update(batch)
    return digest.hexdigest()


def _match(plan: TablePlan, rows: pa.Table | None, same: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's ``match`` section: the previous version's where the answers are its own, else collected."""
    task = plan.task
    if task.output != "list":
        return None
    if same is not None and same.get("match") is not None:
        return same["match"]
    # Without fan-out the rows are the index's own: their claims are kept for the index build at publish.
    return match_summary(rows, task.output_column, keep_in=None if task.target_languages else plan.vdir)


def _language_summary(plan: TablePlan, job: CacheJobOptions, rows: pa.Table | None, result: PipelineResult) -> dict[str, Any]:
    return {
        "column": job.language_column,
        "detector": plan.detector.version() if plan.detector is not None else None,
        "with_examples": list(plan.task.languages),
        "keys_by_language": keys_by_language(rows),
        "detected": read_counter(result, "languages_detected"),
        "unrecognised_column_values": read_counter(result, "language_values_unrecognised"),
    }


def keys_by_language(rows: pa.Table | None) -> dict[str, int]:
    """Prediction rows per language code (``unknown`` for none), most first, then by code."""
    counts: collections.Counter[str] = collections.Counter()
    if rows is not None and rows.num_rows:
        import pyarrow.compute as pc

        # Counted in Arrow: one entry per distinct code, not per row.
        found = pc.value_counts(pc.fill_null(rows.column("language"), ""))
        for code, count in zip(found.field("values").to_pylist(), found.field("counts").to_pylist(), strict=True):
            counts[code or "unknown"] += count
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def read_counter(result: PipelineResult, name: str) -> int | None:
    """A counter of the job's metrics namespace, summed over steps; None where the runner reports no metrics."""
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))["counters"]
    except (NotImplementedError, KeyError):
        return None
    return sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
