"""The prediction-cache job: Parquet queries in, a published prediction table out.

    python -m bulkinfer.pipelines.cache_job --task synonyms --input queries.parquet --output tables/synonyms

Beam flags (``--runner``, ``--direct_num_workers``, Dataflow options, ...) pass through.
"""

from __future__ import annotations

import logging
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from bulkinfer.format import fs, layout
from bulkinfer.format.records import DEAD_LETTER_SCHEMA, prediction_schema
from bulkinfer.models.beam_inference import ModelHandler
from bulkinfer.models.gemma import GEMMA_ALIAS
from bulkinfer.models.vllm_handler import DEFAULT_MAX_BATCH_TOKENS, VLLMHandler
from bulkinfer.pipelines.plan import TablePlan, plan_tables, runner_options
from bulkinfer.pipelines.run_tables import run_tables
from bulkinfer.transforms.build_prompts import BuildPrompts
from bulkinfer.transforms.checkpoint_results import CheckpointResults
from bulkinfer.transforms.count_progress import CountProgress
from bulkinfer.transforms.detect_languages import DetectLanguages
from bulkinfer.transforms.fan_out_languages import FanOutLanguages
from bulkinfer.transforms.generate import Generate
from bulkinfer.transforms.normalize_keys import NormalizeKeys
from bulkinfer.transforms.parse_predictions import ParsePredictions
from bulkinfer.transforms.read_queries import ReadQueries
from bulkinfer.transforms.reuse_results import ReuseResults
from bulkinfer.transforms.sample_keys import SampleKeys
from bulkinfer.transforms.tokenize_prompts import TokenizePrompts
from bulkinfer.transforms.write_version import WriteVersion


class CacheJobOptions(PipelineOptions):
    """Flags of the cache job (Beam's own flags are parsed alongside)."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument("--task", help="built-in task name (synonyms, classify) or path to a task spec .yaml")
        parser.add_argument("--input", help="Parquet file, directory of .parquet files or glob (local, gs://, s3://)")
        parser.add_argument("--output", help="table directory; versions/ and CURRENT are written under it")
        parser.add_argument("--query_column", default="query", help="column holding the query text (default: query)")
        parser.add_argument("--model", default=GEMMA_ALIAS, help=f"local HF model directory, hub id, or {GEMMA_ALIAS} (default)")
        parser.add_argument("--run_id", default=None, help="run id and version name (default: UTC time, e.g. 20261123T101500Z)")
        parser.add_argument("--max_model_len", type=int, default=None, help="context length in tokens (default: the model's)")
        parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
        parser.add_argument("--kv_cache_gib", type=float, default=1.0, help="KV cache per engine in GiB (default 1)")
        parser.add_argument("--gpu_memory_utilization", type=float, default=0.9, help="GPU memory share per engine (GPU only)")
        parser.add_argument("--max_num_seqs", type=int, default=256, help="sequences the engine runs at once (default 256)")
        parser.add_argument(
            "--batch_size", type=int, default=None, help="prompts per engine call; default: batches sized by --max_batch_tokens instead"
        )
        parser.add_argument(
            "--max_batch_tokens",
            type=int,
            default=None,
            help=f"token budget per engine call: prompt tokens + max_tokens per prompt (default {DEFAULT_MAX_BATCH_TOKENS:,})",
        )
        parser.add_argument(
            "--pretokenize",
            choices=("on", "off"),
            default="off",
            help="on: tokenise prompts in their own stage before Generate (exact token budgets); off (default): inside the engine call",
        )
        parser.add_argument(
            "--engines_per_gpu",
            type=int,
            default=1,
            help="engine processes sharing each GPU, each with --kv_cache_gib of KV cache and its share of "
            "--gpu_memory_utilization (default 1; GPU only)",
        )
        parser.add_argument("--full", action="store_true", help="generate every key again instead of reusing the published answers")
        parser.add_argument("--checkpoint_rows", type=int, default=256, help="generated rows per durable checkpoint chunk (default 256)")
        parser.add_argument("--keep", type=int, default=4, help="versions to keep; older ones are deleted after publish (default 4)")
        parser.add_argument(
            "--adapter",
            action="append",
            default=None,
            help="LoRA adapter directory (PEFT), as PATH or NAME=PATH; repeat for several: one table per adapter, OUTPUT/NAME "
            "(default: the task spec's adapter, else none)",
        )
        parser.add_argument(
            "--sample",
            type=int,
            default=None,
            help="run only this many keys, picked by key hash (the same keys in every run over the corpus): a cheap shadow run",
        )
        parser.add_argument("--language_column", default=None, help="column holding each row's language code (en, pt-BR, ...); optional")
        parser.add_argument(
            "--detect_language",
            choices=("auto", "on", "off"),
            default="auto",
            help="detect the language of keys the language column leaves unknown: on, off, or auto (default: on when the "
            "task has examples_by_language or instruction_by_language)",
        )
        parser.add_argument(
            "--target_languages",
            default=None,
            help="comma-separated language codes (de,es,ja): fan each key out into these instead of the task's target_languages",
        )
        parser.add_argument(
            "--language_min_confidence", type=float, default=0.3, help="detections less sure than this are unknown (default 0.3)"
        )


def run(
    argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None, model_handler: ModelHandler | None = None
) -> dict[str, Any]:
    """Runs the job and publishes the new version (one table per LoRA adapter when given several).

    Every check that can fail on user input runs before the pipeline starts. Keys
    whose answer the published version already holds (same fingerprint) are
    reused, not generated again, unless ``--full``. The new version is published
    only when the row accounting holds and every quality gate passes.

    With several ``--adapter`` flags, each adapter gets its own table under
    ``--output`` (``OUTPUT/<adapter name>``), built by its own pipeline one after
    the other; in-process runners share one engine between them, so the model
    loads once.

    Args:
        argv: command-line flags (job flags and Beam flags).
        test_pipeline: a ``TestPipeline`` to run on instead of a new pipeline.
        model_handler: replaces the vLLM handler (tests use a fake one).

    Returns:
        The manifest of the published version; with several adapters,
        ``{"tables": {table directory: manifest, ...}}``.

    Raises:
        ConfigError: a flag, the task spec, the model or the output is wrong, or
            another run holds the table.
        InputError: the input cannot be read as asked.
        GateError: a quality gate failed; the version is kept unpublished (with
            several adapters: after the other tables were published).
    """
    job = PipelineOptions(argv).view_as(CacheJobOptions)
    plans = plan_tables(job, real_engine=model_handler is None)
    return run_tables(runner_options(argv, job), job, plans, _build, model_handler, test_pipeline)


def _build(
    pipeline: beam.Pipeline,
    job: CacheJobOptions,
    plan: TablePlan,
    handler: ModelHandler,
    reuse_from: str | None,
    progress_dir: str | None,
) -> None:
    task, provenance = plan.task, plan.provenance

    def count(collection: beam.PCollection, name: str, label: str = "") -> beam.PCollection:
        # Pass-through steps that feed the live progress display (bulkinfer.console).
        return collection | f"Count{label or name}" >> CountProgress(progress_dir, name) if progress_dir else collection

    columns = [job.query_column, *plan.fields, *([job.language_column] if job.language_column else [])]
    rows = count(pipeline | "ReadQueries" >> ReadQueries(plan.input, list(dict.fromkeys(columns))), "rows_read")
    spill = layout.spill_dir(plan.vdir)
    normalize = NormalizeKeys(job.query_column, plan.fields, provenance, job.language_column, spill=spill)
    groups, bad_rows = rows | "NormalizeKeys" >> normalize
    groups = count(groups, "keys")
    if job.sample is not None:
        groups = groups | "SampleKeys" >> SampleKeys(job.sample)
    if plan.detector is not None:
        groups = groups | "DetectLanguages" >> DetectLanguages(plan.detector)
    if task.target_languages:
        groups = groups | "FanOutLanguages" >> FanOutLanguages(task.target_languages)
    checkpoints = layout.checkpoint_dir(plan.output, provenance.run_id)
    # A --full run regenerates everything, but still resumes its own killed attempt.
    reuse_checkpoints = checkpoints if job.full else fs.join(plan.output, layout.CHECKPOINTS, "*")
    greedy = task.sampling.temperature == 0.0
    reuse = ReuseResults(provenance.fingerprint, greedy, reuse_from, reuse_checkpoints, spill=spill)
    to_generate, reused, reused_dead = groups | "ReuseResults" >> reuse
    to_generate = count(to_generate, "to_generate")
    reused, reused_dead = count(reused, "reused"), count(reused_dead, "reused", "reused_dead")
    requests = to_generate | "BuildPrompts" >> BuildPrompts(task)
    if job.pretokenize == "on" and isinstance(handler, VLLMHandler):
        requests = requests | "TokenizePrompts" >> TokenizePrompts(plan.engine.model)
    generations = count(requests | "Generate" >> Generate(handler), "generated")
    generated, bad_outputs = generations | "ParsePredictions" >> ParsePredictions(task, provenance)
    schema = prediction_schema(task)
    generated = generated | "CheckpointPredictions" >> CheckpointResults(checkpoints, layout.PREDICTIONS, schema, job.checkpoint_rows)
    bad_outputs = bad_outputs | "CheckpointDeadLetters" >> CheckpointResults(
        checkpoints, layout.DEAD_LETTER, DEAD_LETTER_SCHEMA, job.checkpoint_rows
    )
    # No Flatten in front of the writer: the in-process runner would hold every row of the version in memory.
    dead = tuple(
        count(collection, "dead_lettered", f"{label}_dead_lettered")
        for label, collection in (("bad_rows", bad_rows), ("bad_outputs", bad_outputs), ("reused_dead", reused_dead))
    )
    _ = ((generated, reused), dead) | "WriteVersion" >> WriteVersion(plan.vdir, schema)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run()
