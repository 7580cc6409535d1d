"""The prediction-cache job: Parquet queries in, a published prediction table out.

    python -m bulkinfer.pipelines.cache_job --task synonyms --input queries.parquet --output tables/synonyms

Beam flags (``--runner``, ``--direct_num_workers``, Dataflow options, ...) pass through.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.options.pipeline_options import PipelineOptions
from bulkinfer.models.engine import Adapter, EngineConfig, engine_version, fingerprint, load_adapter, model_digest, resolve_model
from bulkinfer.models.gemma import GEMMA_ALIAS
from bulkinfer.models.vllm_handler import DEFAULT_MAX_BATCH_TOKENS, VLLMHandler, release_shared_engine
from bulkinfer.transforms.build_prompts import BuildPrompts
from bulkinfer.transforms.checkpoint_results import CheckpointResults
from bulkinfer.transforms.detect_languages import DetectLanguages
from bulkinfer.transforms.generate import Generate
from bulkinfer.transforms.normalize_keys import NormalizeKeys
from bulkinfer.transforms.parse_predictions import ParsePredictions
from bulkinfer.transforms.read_queries import ReadQueries
from bulkinfer.transforms.reuse_results import ReuseResults
from bulkinfer.transforms.sample_keys import SampleKeys
from bulkinfer.transforms.tokenize_prompts import TokenizePrompts
from bulkinfer.transforms.write_version import WriteVersion

from bulkinfer.errors import ConfigError, GateError, InputError
from bulkinfer.format import layout, quality
from bulkinfer.format.lock import TableLock
from bulkinfer.format.records import DEAD_LETTER_SCHEMA, METRICS_NAMESPACE, SCHEMA_VERSION, Provenance, prediction_schema
from bulkinfer.keys import KEY_VERSION
from bulkinfer.lookup import store
from bulkinfer.tasks.languages import LanguageDetector
from bulkinfer.tasks.spec import TaskSpec, load_task

_LOG = logging.getLogger(__name__)


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
    options = PipelineOptions(argv)
    job = options.view_as(CacheJobOptions)
    plans = _plan(job, real_engine=model_handler is None)
    _engine_workers(options, job)
    if len(plans) == 1:
        handler = model_handler or _handler(job, plans[0], share_as=None)
        return _run_table(options, job, plans[0], handler, test_pipeline)
    share_as = f"cache_job-{os.getpid()}-{id(plans)}"
    manifests: dict[str, Any] = {}
    failures: list[str] = []
    try:
        for plan in plans:
            handler = model_handler or _handler(job, plan, share_as=share_as)
            try:
                manifests[plan.output] = _run_table(options, job, plan, handler, test_pipeline)
            except GateError as e:
                failures.append(str(e))
    finally:
        release_shared_engine(share_as)
    if failures:
        raise GateError("; ".join(failures))
    return {"tables": manifests}


def _engine_workers(options: PipelineOptions, job: CacheJobOptions) -> None:
    """``--engines_per_gpu N`` on the in-process DirectRunner: N worker processes, one engine each.

    Other runners start one engine per SDK worker process; give them N processes per
    GPU machine with their own flags (see README, "Throughput").
    """
    if job.engines_per_gpu == 1:
        return
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner
    direct = options.view_as(DirectOptions)
    if runner not in (None, "DirectRunner", "BundleBasedDirectRunner", "FnApiRunner"):
        return
    if direct.direct_num_workers not in (None, 1, job.engines_per_gpu) or direct.direct_running_mode == "multi_threading":
        raise ConfigError(
            f"--engines_per_gpu {job.engines_per_gpu} runs that many worker processes (one engine each), but "
            f"--direct_num_workers is {direct.direct_num_workers} and --direct_running_mode {direct.direct_running_mode}; leave them unset"
        )
    direct.direct_num_workers = job.engines_per_gpu
    direct.direct_running_mode = "multi_processing"


def _handler(job: CacheJobOptions, plan: _Plan, share_as: str | None) -> VLLMHandler:
    task = plan.task
    return VLLMHandler(
        plan.engine,
        task.sampling,
        batch_size=job.batch_size,
        max_batch_tokens=job.max_batch_tokens,
        structured=task.structured,
        labels=task.labels,
        adapter=plan.adapter,
        share_engine_as=share_as,
    )


def _run_table(
    options: PipelineOptions, job: CacheJobOptions, plan: _Plan, handler: ModelHandler, test_pipeline: beam.Pipeline | None
) -> dict[str, Any]:
    started = time.time()
    output = plan.output
    with TableLock(output, plan.provenance.run_id):
        previous = layout.read_current(output)
        if previous == plan.provenance.run_id:
            raise ConfigError(f"run id {previous} is already the published version of {output}; give a new --run_id")
        _clear_leftovers(plan.vdir)
        reuse_from = None if job.full or previous is None else layout.version_dir(output, previous)
        pipeline = test_pipeline or beam.Pipeline(options=options)
        _build(pipeline, job, plan, handler, reuse_from)
        result = pipeline.run()
        result.wait_until_finish()

        manifest = _summarise(plan, job, result, started, previous)
        layout.write_manifest(plan.vdir, manifest)
        failed = manifest["gates"]["failed"]
        if failed:
            first = failed[0]
            raise GateError(
                f"quality gate {first['gate']} failed: {first['value']} against threshold {first['threshold']} "
                f"(set in --task {job.task}, gates.{first['gate']}); version {plan.provenance.run_id} kept unpublished "
                f"in {plan.vdir}; {output} still serves {previous or 'nothing'}"
                + (f"; {len(failed) - 1} more gate(s) failed, see manifest.json" if len(failed) > 1 else "")
            )
        # Lookups open the version's store, not its Parquet: build it while readers still see the previous version.
        store.write_store(output, plan.provenance.run_id)
        layout.publish(output, plan.provenance.run_id)
        # Published: every checkpointed result is in the table now (or was superseded).
        checkpoints = FileSystems.join(output, layout.CHECKPOINTS)
        if FileSystems.exists(checkpoints):
            FileSystems.delete([checkpoints])
        pruned = layout.prune_versions(output, keep=job.keep)
    _LOG.info("published %s version %s: %s (pruned %s)", output, plan.provenance.run_id, manifest["counts"], pruned or "none")
    return manifest


def _build(pipeline: beam.Pipeline, job: CacheJobOptions, plan: _Plan, handler: ModelHandler, reuse_from: str | None) -> None:
    task, provenance = plan.task, plan.provenance
    columns = [job.query_column, *plan.fields, *([job.language_column] if job.language_column else [])]
    rows = pipeline | "ReadQueries" >> ReadQueries(plan.input, list(dict.fromkeys(columns)))
    groups, bad_rows = rows | "NormalizeKeys" >> NormalizeKeys(job.query_column, plan.fields, provenance, job.language_column)
    if job.sample is not None:
        groups = groups | "SampleKeys" >> SampleKeys(job.sample)
    if plan.detector is not None:
        groups = groups | "DetectLanguages" >> DetectLanguages(plan.detector)
    checkpoints = layout.checkpoint_dir(plan.output, provenance.run_id)
    # A --full run regenerates everything, but still resumes its own killed attempt.
    reuse_checkpoints = checkpoints if job.full else FileSystems.join(plan.output, layout.CHECKPOINTS, "*")
    sources = {
        "previous": _read_results(pipeline, "Previous", reuse_from, layout.PREDICTIONS),
        "previous_dead": _read_results(pipeline, "PreviousDead", reuse_from, layout.DEAD_LETTER),
        "checkpoint": _read_results(pipeline, "Checkpoint", reuse_checkpoints, layout.PREDICTIONS),
        "checkpoint_dead": _read_results(pipeline, "CheckpointDead", reuse_checkpoints, layout.DEAD_LETTER),
    }
    greedy = task.sampling.temperature == 0.0
    to_generate, reused, reused_dead = (groups, sources) | "ReuseResults" >> ReuseResults(provenance.fingerprint, greedy)
    requests = to_generate | "BuildPrompts" >> BuildPrompts(task)
    if job.pretokenize == "on" and isinstance(handler, VLLMHandler):
        requests = requests | "TokenizePrompts" >> TokenizePrompts(plan.engine.model)
    generations = requests | "Generate" >> Generate(handler)
    generated, bad_outputs = generations | "ParsePredictions" >> ParsePredictions(task, provenance)
    schema = prediction_schema(task)
    generated = generated | "CheckpointPredictions" >> CheckpointResults(checkpoints, layout.PREDICTIONS, schema, job.checkpoint_rows)
    bad_outputs = bad_outputs | "CheckpointDeadLetters" >> CheckpointResults(
        checkpoints, layout.DEAD_LETTER, DEAD_LETTER_SCHEMA, job.checkpoint_rows
    )
    predictions = (generated, reused) | "Predictions" >> beam.Flatten()
    dead = (bad_rows, bad_outputs, reused_dead) | "DeadLetters" >> beam.Flatten()
    _ = (predictions, dead) | "WriteVersion" >> WriteVersion(plan.vdir, schema)


def _read_results(pipeline: beam.Pipeline, label: str, directory: str | None, kind: str) -> beam.PCollection:
    pattern = FileSystems.join(directory, f"{kind}-*.parquet") if directory else None
    if pattern is None or not FileSystems.match([pattern])[0].metadata_list:
        return pipeline | f"No{label}" >> beam.Create([])
    return pipeline | f"Read{label}" >> beam.io.ReadFromParquet(pattern)


@dataclass(frozen=True)
class _Plan:
    task: TaskSpec
    fields: list[str]
    input: str
    rows_in: int
    engine: EngineConfig
    provenance: Provenance
    output: str
    vdir: str
    adapter: Adapter | None = None
    detector: LanguageDetector | None = None


def _plan(job: CacheJobOptions, real_engine: bool) -> list[_Plan]:
    """Checks everything that can be wrong before any work; one plan per output table."""
    for flag in ("task", "input", "output"):
        if not getattr(job, flag):
            raise ConfigError(f"--{flag} is required")
    if job.batch_size is not None and job.batch_size < 1:
        raise ConfigError(f"--batch_size must be >= 1, got {job.batch_size}")
    if job.max_batch_tokens is not None and job.batch_size is not None:
        raise ConfigError("--batch_size and --max_batch_tokens both size engine calls; give one of them")
    if job.max_batch_tokens is not None and job.max_batch_tokens < 1:
        raise ConfigError(f"--max_batch_tokens must be >= 1, got {job.max_batch_tokens}")
    if job.checkpoint_rows < 1:
        raise ConfigError(f"--checkpoint_rows must be >= 1, got {job.checkpoint_rows}")
    if job.keep < 1:
        raise ConfigError(f"--keep must be >= 1 (the published version is always kept), got {job.keep}")
    if job.sample is not None and job.sample < 1:
        raise ConfigError(f"--sample must be >= 1 (keys to run), got {job.sample}")
    task = load_task(job.task)
    if job.max_model_len is not None and job.max_model_len <= task.sampling.max_tokens:
        raise ConfigError(
            f"--max_model_len {job.max_model_len} leaves no room for a prompt: task {task.name} generates up to "
            f"sampling.max_tokens={task.sampling.max_tokens} tokens; raise --max_model_len"
        )
    if os.path.abspath(job.output) == os.path.abspath(job.input) or (job.input.rstrip("/") + "/").startswith(job.output.rstrip("/") + "/"):
        raise ConfigError(f"--output {job.output} and --input {job.input} overlap; write the table somewhere else")
    fields = sorted(task.template.fields())
    input_pattern, rows_in = inspect_input(job.input, job.query_column, fields, job.language_column)
    detector = _language_detector(job, task)
    run_id = job.run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if not layout.valid_version(run_id):
        raise ConfigError(f"--run_id must be letters, digits, '.', '_' or '-' (at most 128), got {run_id!r}")
    model = resolve_model(job.model) if real_engine else job.model
    if task.format == "chat" and real_engine:
        _check_chat_template(job.model, model, job.task)
    adapter_specs = list(job.adapter or ([task.adapter] if task.adapter else []))
    adapters = [load_adapter(spec, i, model) for i, spec in enumerate(adapter_specs)]
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise ConfigError(f"--adapter names must differ (they name the tables), got {names}; write --adapter NAME=PATH")
    engine = EngineConfig(
        model=model,
        max_model_len=job.max_model_len,
        dtype=job.dtype,
        kv_cache_gib=job.kv_cache_gib,
        gpu_memory_utilization=job.gpu_memory_utilization,
        max_num_seqs=job.max_num_seqs,
        engines_per_gpu=job.engines_per_gpu,
        seed=task.sampling.seed,
        max_lora_rank=max((a.rank for a in adapters), default=None),
        max_loras=max(1, len(adapters)),
    )
    digest = model_digest(model)
    engine_name = engine_version()
    plans = []
    for adapter in adapters or [None]:
        output = FileSystems.join(job.output, adapter.name) if len(adapters) > 1 and adapter else job.output
        adapter_digest = adapter.digest if adapter else ""
        # The adapter's content is part of the task's identity: a retrained adapter is a new task version.
        task_fingerprint = fingerprint(task.fingerprint(), adapter_digest) if adapter else task.fingerprint()
        provenance = Provenance(
            run_id=run_id,
            model=job.model,
            model_digest=digest,
            task=task.name,
            task_fingerprint=task_fingerprint,
            fingerprint=fingerprint(
                task_fingerprint, digest, engine_name, job.max_model_len, job.dtype, SCHEMA_VERSION, _language_config(job, detector)
            ),
            engine=engine_name,
            adapter=adapter.name if adapter else "",
            adapter_digest=adapter_digest,
        )
        _check_writable(output)
        plans.append(
            _Plan(task, fields, input_pattern, rows_in, engine, provenance, output, layout.version_dir(output, run_id), adapter, detector)
        )
    return plans


def _check_chat_template(given: str, resolved: str, task_flag: str) -> None:
    """A chat task on a model whose tokenizer has no chat template cannot render its turns."""
    directory = Path(resolved)
    if not directory.is_dir():
        return  # a hub id: vLLM's tokenizer load reports it
    if (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        return
    config = directory / "tokenizer_config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("chat_template"):
        return
    raise ConfigError(
        f"--task {task_flag} has format: chat, but --model {given} has no chat template (no chat_template in its "
        f"tokenizer_config.json, no chat_template.jinja); use a chat/instruct model or format: completion"
    )


def _language_detector(job: CacheJobOptions, task: TaskSpec) -> LanguageDetector | None:
    """The detector for keys without a language, or None when detection is off."""
    if job.detect_language == "off" or (job.detect_language == "auto" and not task.languages):
        return None
    if not 0.0 <= job.language_min_confidence < 1.0:
        raise ConfigError(f"--language_min_confidence must be in [0, 1), got {job.language_min_confidence}")
    detector = LanguageDetector(job.language_min_confidence)
    try:
        detector.version()
    except ImportError as e:
        raise ConfigError(f"{e} (task {task.name} has examples for {', '.join(task.languages) or 'no language'})") from e
    return detector


def _language_config(job: CacheJobOptions, detector: LanguageDetector | None) -> dict[str, Any]:
    # A detector upgrade can change a key's language and with it the prompt: results must not be reused across one.
    return {"language_column": job.language_column, "detector": detector.version() if detector is not None else None}


def inspect_input(path: str, query_column: str, fields: list[str], language_column: str | None = None) -> tuple[str, int]:
    """Checks the corpus before any work: files exist, are Parquet, have the columns.

    Returns:
        The file pattern to read and the total number of rows.

    Raises:
        InputError: naming the file or column and what to do.
    """
    pattern = FileSystems.join(path, "*.parquet") if _is_dir(path) else path
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # FileSystems raises BeamIOError, or ValueError for an unknown scheme
        raise InputError(f"--input {path}: cannot list it ({e})") from e
    if not matched:
        raise InputError(f"--input {path}: no such file (no Parquet file matches {pattern})")
    rows = 0
    for meta in sorted(matched, key=lambda m: m.path):
        try:
            schema, file_rows = layout.parquet_schema(meta.path)
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"--input {meta.path} is not a readable Parquet file: {e}") from e
        for column in [query_column, *fields, *([language_column] if language_column else [])]:
            if column not in schema.names:
                which = {query_column: "--query_column", language_column: "--language_column"}.get(column, "the task template")
                raise InputError(f"--input {meta.path} has no column {column!r} (named by {which}); columns: {', '.join(schema.names)}")
        if language_column:
            language_type = schema.field(language_column).type
            if pa.types.is_dictionary(language_type):
                language_type = language_type.value_type
            if not any(is_type(language_type) for is_type in (pa.types.is_string, pa.types.is_large_string, pa.types.is_null)):
                raise InputError(
                    f"--input {meta.path}: column {language_column!r} (--language_column) is {language_type}, "
                    f"not text; it should hold language codes such as 'en' or 'pt-BR'"
                )
        query_type = schema.field(query_column).type
        if pa.types.is_dictionary(query_type):
            query_type = query_type.value_type
        textual = (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary, pa.types.is_null)
        if not any(is_type(query_type) for is_type in textual):
            raise InputError(
                f"--input {meta.path}: column {query_column!r} is {query_type}, not text; pick the text column with --query_column"
            )
        rows += file_rows
    if rows == 0:
        raise InputError(f"--input {path} has no rows; nothing to do")
    return pattern, rows


def _is_dir(path: str) -> bool:
    if "://" in path:
        return path.endswith("/")
    return os.path.isdir(path)


def _check_writable(table: str) -> None:
    probe = FileSystems.join(table, f".write-probe-{os.getpid()}")
    try:
        layout.write_text(probe, "ok")
        FileSystems.delete([probe])
    except Exception as e:  # any filesystem error here means the same thing to the user
        raise ConfigError(f"--output {table} is not writable: {e}") from e


def _clear_leftovers(vdir: str) -> None:
    if FileSystems.exists(vdir):
        # Left by a run with this id that died before publishing: never published, safe to replace.
        _LOG.warning("replacing unpublished leftovers of this run id in %s", vdir)
        FileSystems.delete([vdir])


def _summarise(plan: _Plan, job: CacheJobOptions, result: Any, started: float, previous: str | None) -> dict[str, Any]:
    task, provenance = plan.task, plan.provenance
    rows = layout.read_shards(plan.vdir, layout.PREDICTIONS, ["key", task.output_column, "raw_output", "source_rows", "run_id", "language"])
    dead = layout.read_shards(plan.vdir, layout.DEAD_LETTER, ["reason", "source_rows", "run_id"])
    keys = rows.num_rows if rows is not None else 0
    rows_in_table = int(pc.sum(rows.column("source_rows")).as_py() or 0) if keys else 0
    reused = int(pc.sum(pc.not_equal(rows.column("run_id"), provenance.run_id)).as_py() or 0) if keys else 0
    dead_rows: collections.Counter[str] = collections.Counter()
    dead_records: collections.Counter[str] = collections.Counter()
    if dead is not None:
        for reason, count in zip(dead.column("reason").to_pylist(), dead.column("source_rows").to_pylist(), strict=True):
            dead_rows[reason] += count
            dead_records[reason] += 1
    rows_dead = sum(dead_rows.values())
    reused_dead = int(pc.sum(pc.not_equal(dead.column("run_id"), provenance.run_id)).as_py() or 0) if dead is not None else 0
    not_sampled = (_counter(result, "rows_not_sampled") or 0) if job.sample is not None else 0
    if rows_in_table + rows_dead + not_sampled != plan.rows_in:
        raise RuntimeError(
            f"row accounting failed: {plan.rows_in} input rows, but {rows_in_table} behind table keys + "
            f"{rows_dead} dead-lettered + {not_sampled} left out by --sample; version {provenance.run_id} left unpublished in {plan.vdir}"
        )
    before = None
    if previous is not None:
        previous_dir = layout.version_dir(plan.output, previous)
        # Churn compares outputs of the same kind: only when the published version has this output column.
        if layout.read_manifest(previous_dir).get("output_column") == task.output_column:
            before = layout.read_shards(previous_dir, layout.PREDICTIONS, ["key", task.output_column])
    measured = quality.measure(task, rows, dead_records, before)
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
            "rows_in_table": rows_in_table,
            "rows_dead": rows_dead,
            "rows_not_sampled": not_sampled,
            "keys": keys,
            "dead_letter_records": sum(dead_records.values()),
            "reused": reused,
            "reused_dead_letters": reused_dead,
            "resumed_from_checkpoints": _counter(result, "resumed_from_checkpoints"),
            "generated": _counter(result, "prompts_generated"),
            "engine_starts": _counter(result, "engine_starts"),
        },
        "dead_letter_reasons": dict(sorted(dead_rows.items())),
        "quality": {name: round(value, 4) if isinstance(value, float) else value for name, value in measured.items()},
        "key_normalizer": KEY_VERSION,
        "languages": _language_summary(plan, job, rows, result),
        "gates": {"passed": not failed, "failed": failed, "thresholds": asdict(task.gates)},
        "started_at": _iso(started),
        "finished_at": _iso(time.time()),
        "wall_seconds": round(time.time() - started, 3),
    }
    return json.loads(json.dumps(manifest))  # exactly what readers of manifest.json will see


def _language_summary(plan: _Plan, job: CacheJobOptions, rows: pa.Table | None, result: Any) -> dict[str, Any]:
    keys_by_language: collections.Counter[str] = collections.Counter()
    if rows is not None:
        keys_by_language.update(code or "unknown" for code in rows.column("language").to_pylist())
    return {
        "column": job.language_column,
        "detector": plan.detector.version() if plan.detector is not None else None,
        "with_examples": list(plan.task.languages),
        "keys_by_language": dict(sorted(keys_by_language.items(), key=lambda kv: (-kv[1], kv[0]))),
        "detected": _counter(result, "languages_detected"),
        "unrecognised_column_values": _counter(result, "language_values_unrecognised"),
    }


def _counter(result: Any, name: str) -> int | None:
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))["counters"]
    except (NotImplementedError, KeyError):
        return None
    return sum((c.committed if c.committed is not None else c.attempted) or 0 for c in counters)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run()
