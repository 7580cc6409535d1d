"""``bulkinfer run --dry_run``: what a run would do and cost, without an engine and without writing a version.

The dry run applies the job's own rules, not copies of them: the key row and
representative spelling of ``NormalizeKeys``, the sample of ``SampleKeys``, the
detector of ``DetectLanguages``, the reuse rules of ``ReuseResults``, the prompt of
``BuildPrompts`` and the tokenisation and context check of the vLLM handler, with the
model's real tokenizer (``transformers``; no engine). Only what takes an engine is
estimated: engine time from a throughput profile (the last published run's measured
engine rate, or a ``bulkinfer bench`` result), and its cost at ``--gpu_hour_price``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bulkinfer.errors import ConfigError
from bulkinfer.format import fs, layout
from bulkinfer.format.progress import PROGRESS_NAME

if TYPE_CHECKING:
    from bulkinfer.pipelines.cache_job import CacheJobOptions
    from bulkinfer.pipelines.plan import TablePlan

TOKENIZE_BATCH = 512
"""Prompts per tokenizer call."""


@dataclass(frozen=True)
class ThroughputProfile:
    """How fast the engine stage went on a measured run: what the estimate scales."""

    seconds_per_prompt: float
    """Engine-stage seconds per generated prompt (from the first key sent towards the engine to the last answer)."""
    output_tokens_per_prompt: float | None
    """Mean generated tokens per prompt, when known."""
    source: str
    """Where the figures come from (a version's progress.json, or a bench file)."""

    def __post_init__(self) -> None:
        if not self.seconds_per_prompt > 0:
            raise ValueError(f"seconds_per_prompt must be > 0, got {self.seconds_per_prompt}")


def dry_run(argv: list[str]) -> dict[str, Any]:
    """Counts and estimates what ``bulkinfer run`` with ``argv`` would do; starts no engine, writes no version.

    Returns:
        The estimate, JSON-ready: counts per table, prompt tokens, engine seconds,
        GPU hours and cost (when ``--gpu_hour_price`` is given), and the dry run's own time.

    Raises:
        ConfigError: a flag is wrong (as for the run), or the throughput profile cannot be read.
        InputError: the corpus cannot be read.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    from bulkinfer.pipelines.cache_job import CacheJobOptions
    from bulkinfer.pipelines.console_options import ConsoleOptions
    from bulkinfer.pipelines.plan import plan_tables

    started = time.perf_counter()
    job = PipelineOptions(argv).view_as(CacheJobOptions)
    console = PipelineOptions(argv).view_as(ConsoleOptions)
    if console.gpu_hour_price is not None and console.gpu_hour_price < 0:
        raise ConfigError(f"--gpu_hour_price must be >= 0, got {console.gpu_hour_price}")
    plans = plan_tables(job, real_engine=True)
    groups, dead_rows = _key_groups(plans[0], job)
    tables = {}
    for plan in plans:
        profile = load_profile(console.throughput or plan.output)
        tables[plan.output] = _estimate_table(plan, job, groups, dead_rows, profile, console.gpu_hour_price)
    result = {"dry_run": True, "task": plans[0].task.name, "input": job.input, "tables": tables}
    result["dry_run_seconds"] = round(time.perf_counter() - started, 3)
    return result


def load_profile(source: str) -> ThroughputProfile | None:
    """The throughput profile in ``source``: a bench JSON file, or a table directory (its published version's run).

    Returns:
        None when ``source`` is a table with no published version, or whose published run generated nothing.

    Raises:
        ConfigError: ``source`` is a file that is no bench result.
    """
    if source.endswith(".json"):
        try:
            bench = json.loads(layout.read_text(source))
            variants = bench["variants"]
            variant = variants.get("c") or variants.get("d")
            rate = float(variant["prompts_per_s"])
            tokens = variant.get("output_tokens_per_s")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"--throughput {source} is not a `bulkinfer bench --out` result with variant c or d ({e})") from e
        return ThroughputProfile(1.0 / rate, float(tokens) / rate if tokens else None, f"bench {source}")
    version = layout.read_current(source) if fs.exists(source) else None
    if version is None:
        return None
    path = fs.join(layout.version_dir(source, version), PROGRESS_NAME)
    if not fs.exists(path):
        return None
    progress = json.loads(layout.read_text(path))
    generated = progress.get("counts", {}).get("generated", 0)
    seconds = progress.get("engine_seconds", 0.0)
    if not generated or not seconds:
        return None
    tokens = progress["counts"].get("output_tokens")
    return ThroughputProfile(seconds / generated, tokens / generated if tokens else None, f"{source} version {version}")


def _key_groups(plan: TablePlan, job: CacheJobOptions) -> tuple[list[Any], int]:
    """One ``QueryGroup`` per key, by the job's own NormalizeKeys rules; and the rows dead-lettered there."""
    from bulkinfer.transforms.normalize_keys import KeyRow, PickRepresentative, to_query_group

    keyer = KeyRow(job.query_column, plan.fields, plan.provenance, job.language_column)
    combine = PickRepresentative()
    accumulators: dict[str, Any] = {}
    dead = 0
    for row in _rows(plan, job):
        for out in keyer.process(row):
            if not isinstance(out, tuple):  # a tagged dead letter
                dead += 1
                continue
            key, value = out
            accumulators[key] = combine.add_input(accumulators.get(key) or combine.create_accumulator(), value)
    return [to_query_group((key, combine.extract_output(acc))) for key, acc in accumulators.items()], dead


def _rows(plan: TablePlan, job: CacheJobOptions) -> Iterator[dict[str, Any]]:
    columns = list(dict.fromkeys([job.query_column, *plan.fields, *([job.language_column] if job.language_column else [])]))
    for path in sorted(fs.match(plan.input)):
        table = layout.read_parquet(path, columns)
        for batch in table.to_batches(max_chunksize=65_536):
            yield from batch.to_pylist()


def _estimate_table(
    plan: TablePlan,
    job: CacheJobOptions,
    groups: list[Any],
    dead_rows: int,
    profile: ThroughputProfile | None,
    gpu_hour_price: float | None,
) -> dict[str, Any]:
    from bulkinfer.format.records import group_table
    from bulkinfer.transforms.reuse_results import split_by_reuse
    from bulkinfer.transforms.sample_keys import key_rank

    not_sampled = 0
    if job.sample is not None and len(groups) > job.sample:
        ranked = sorted(groups, key=lambda g: key_rank(g.key))
        groups, left_out = ranked[: job.sample], ranked[job.sample :]
        not_sampled = sum(g.source_rows for g in left_out)
    if plan.detector is not None:
        import dataclasses

        groups = [dataclasses.replace(g, language=plan.detector.detect(g.query)) if g.language is None else g for g in groups]
    table = group_table(groups, plan.fields)
    if plan.task.target_languages:
        from bulkinfer.transforms.fan_out_languages import fan_out

        table = fan_out(table, plan.task.target_languages)
    split = split_by_reuse(table, _earlier_results(plan, job), plan.provenance.fingerprint, plan.task.sampling.temperature == 0.0)
    to_generate, reused, reused_dead = split.to_generate, split.reused.num_rows, split.reused_dead.num_rows
    lengths = _prompt_lengths(plan, to_generate)
    budget = _max_model_len(plan) - plan.task.sampling.max_tokens
    fitting = [n for n in lengths if n <= budget]
    prompts = len(fitting)
    estimate: dict[str, Any] = {"profile": None, "engine_seconds": None, "gpu_hours": None, "cost": None, "output_tokens": None}
    if profile is not None:
        seconds = prompts * profile.seconds_per_prompt
        estimate = {
            "profile": {"source": profile.source, "seconds_per_prompt": round(profile.seconds_per_prompt, 6)},
            "engine_seconds": round(seconds, 1),
            "gpu_hours": round(seconds / 3600, 4),
            "cost": round(seconds / 3600 * gpu_hour_price, 2) if gpu_hour_price is not None else None,
            "output_tokens": round(prompts * profile.output_tokens_per_prompt) if profile.output_tokens_per_prompt else None,
        }
    return {
        "rows_in": plan.rows_in,
        "rows_dead_at_keys": dead_rows,
        "rows_not_sampled": not_sampled,
        "keys": table.num_rows,
        "reused": reused,
        "reused_dead_letters": reused_dead,
        "to_generate": to_generate.num_rows,
        "prompt_too_long": len(lengths) - prompts,
        "prompts": prompts,
        "prompt_tokens": sum(fitting),
        "max_prompt_tokens": max(fitting, default=0),
        "estimate": estimate,
    }


def _earlier_results(plan: TablePlan, job: CacheJobOptions) -> dict[str, Any]:
    """The results ReuseResults would join, by source (only the columns its rules read)."""
    import pyarrow as pa

    previous = None if job.full else layout.read_current(plan.output) if fs.exists(plan.output) else None
    previous_dir = layout.version_dir(plan.output, previous) if previous else None
    checkpoints = layout.checkpoint_dir(plan.output, plan.provenance.run_id) if job.full else fs.join(plan.output, layout.CHECKPOINTS, "*")
    sources = {
        "previous": (previous_dir, layout.PREDICTIONS),
        "previous_dead": (previous_dir, layout.DEAD_LETTER),
        "checkpoint": (checkpoints, layout.PREDICTIONS),
        "checkpoint_dead": (checkpoints, layout.DEAD_LETTER),
    }
    out: dict[str, Any] = {}
    for name, (directory, kind) in sources.items():
        tables = []
        for path in fs.match(fs.join(directory, f"{kind}-*.parquet")) if directory else []:
            schema, _ = layout.parquet_schema(path)
            tables.append(
                layout.read_parquet(path, [c for c in ("key", "fingerprint", "language", "reason", "source_rows") if c in schema.names])
            )
        out[name] = pa.concat_tables(tables, promote_options="permissive") if tables else None
    return out


def _prompt_lengths(plan: TablePlan, groups: Any) -> list[int]:
    """Prompt tokens per row of a key-group table, with the model's own tokenizer, as the engine stage tokenises them."""
    if not groups.num_rows:
        return []
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ImportError("a dry run counts tokens with transformers: pip install 'bulkinfer[cpu]' or 'bulkinfer[gpu]'") from e
    from bulkinfer.models.vllm_handler import tokenize_requests
    from bulkinfer.transforms.build_prompts import prompt_requests

    tokenizer = AutoTokenizer.from_pretrained(plan.engine.model)
    lengths: list[int] = []
    for start in range(0, groups.num_rows, TOKENIZE_BATCH):
        requests = prompt_requests(groups.slice(start, TOKENIZE_BATCH), plan.task)
        lengths.extend(len(ids) for ids in tokenize_requests(tokenizer, requests))
    return lengths


def _max_model_len(plan: TablePlan) -> int:
    if plan.engine.max_model_len is not None:
        return plan.engine.max_model_len
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(plan.engine.model)
    config = getattr(config, "text_config", config)
    return int(config.max_position_embeddings)


def render_estimate(result: dict[str, Any]) -> str:
    """The estimate as a table for the terminal."""
    lines = [f"dry run of --task {result['task']} over {result['input']} ({result['dry_run_seconds']:.1f} s; no engine started)"]
    for table, t in result["tables"].items():
        e = t["estimate"]
        rows = [
            ("input rows", t["rows_in"]),
            ("rows dead-lettered at keys", t["rows_dead_at_keys"]),
            ("rows not sampled", t["rows_not_sampled"]),
            ("keys", t["keys"]),
            ("reused from earlier runs", t["reused"] + t["reused_dead_letters"]),
            ("to generate", t["to_generate"]),
            ("prompt too long (dead letters)", t["prompt_too_long"]),
            ("prompts to the engine", t["prompts"]),
            ("prompt tokens", t["prompt_tokens"]),
        ]
        lines.append(f"\n{table}")
        lines += [f"  {name:<32}{value:>14,}" for name, value in rows]
        if e["profile"] is None:
            lines.append("  engine time: no profile (no published run of this table with progress figures; give --throughput)")
            continue
        lines.append(f"  {'engine time (estimate)':<32}{_hms(e['engine_seconds']):>14}  from {e['profile']['source']}")
        lines.append(f"  {'GPU hours (estimate)':<32}{e['gpu_hours']:>14,.3f}")
        if e["output_tokens"] is not None:
            lines.append(f"  {'output tokens (estimate)':<32}{e['output_tokens']:>14,}")
        if e["cost"] is not None:
            lines.append(f"  {'cost (estimate)':<32}{e['cost']:>14,.2f}  at --gpu_hour_price")
    return "\n".join(lines)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
