"""Planning the cache job: every flag, the task, the model, adapters and the corpus checked before any work.

The job file (:mod:`bulkinfer.pipelines.cache_job`) parses flags and wires stages;
what a run will do, and whether it can, is decided here: one :class:`TablePlan` per
output table, the engine handler for it, and the runner options it needs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, PortableOptions, StandardOptions

from bulkinfer.errors import ConfigError, InputError, TableError
from bulkinfer.format import fs, layout
from bulkinfer.format.records import SCHEMA_VERSION, Provenance
from bulkinfer.models.engine import Adapter, EngineConfig, engine_version, fingerprint, load_adapter, model_digest, resolve_model
from bulkinfer.models.vllm_handler import VLLMHandler
from bulkinfer.pipelines.console_options import embedded_pool
from bulkinfer.tasks.languages import LanguageDetector, check_language_code
from bulkinfer.tasks.spec import TaskSpec, load_task

if TYPE_CHECKING:  # the options class lives with the job it configures
    from bulkinfer.pipelines.cache_job import CacheJobOptions


@dataclass(frozen=True)
class TablePlan:
    """Everything one output table's pipeline needs, checked before any work starts."""

    task: TaskSpec
    """The validated task spec."""
    fields: list[str]
    """Corpus columns the prompt template reads besides the query, sorted."""
    input: str
    """The Parquet file pattern to read."""
    rows_in: int
    """Rows in the corpus (from the Parquet footers): what the row accounting must add up to."""
    engine: EngineConfig
    """The vLLM engine the table is generated with."""
    provenance: Provenance
    """The provenance columns of every row of the new version."""
    output: str
    """The table directory (``OUTPUT`` or ``OUTPUT/<adapter>``)."""
    vdir: str
    """The new version's directory."""
    adapter: Adapter | None = None
    """The LoRA adapter, if any."""
    detector: LanguageDetector | None = None
    """Detects the language of keys without one; None when detection is off."""


def plan_tables(job: CacheJobOptions, real_engine: bool) -> list[TablePlan]:
    """Checks everything that can be wrong before any work; one plan per output table.

    Args:
        job: the parsed job flags.
        real_engine: False when a test injects its own model handler: the model is
            then not resolved or converted, and its chat template not checked.

    Raises:
        ConfigError: a flag, the task spec, the model, an adapter or the output is wrong.
        InputError: the corpus cannot be read as asked.
    """
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
    if job.target_languages is not None:
        task = with_target_languages(task, job.target_languages)
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
        output = fs.join(job.output, adapter.name) if len(adapters) > 1 and adapter else job.output
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
        _check_published(output)
        vdir = layout.version_dir(output, run_id)
        plans.append(TablePlan(task, fields, input_pattern, rows_in, engine, provenance, output, vdir, adapter, detector))
    return plans


def make_handler(job: CacheJobOptions, plan: TablePlan, share_as: str | None) -> VLLMHandler:
    """The vLLM model handler of one table: the plan's engine, the task's sampling, the job's batching.

    Args:
        job: the parsed job flags (batch sizing).
        plan: the table's plan.
        share_as: a name under which tables of one run share one engine (several
            adapters), or None for an engine of its own.
    """
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


def runner_options(argv: list[str] | None, job: CacheJobOptions) -> PipelineOptions:
    """The pipeline options to run with: ``argv`` as given, plus worker processes for ``--engines_per_gpu``.

    ``--engines_per_gpu N`` on the in-process DirectRunner means N worker processes,
    one engine each. Other runners start one engine per SDK worker process; give
    them N processes per GPU machine with their own flags (see README, "Throughput").
    A portable runner's job service, and with ``--job_endpoint embed`` its SDK worker
    pool, must answer before any work starts (:func:`check_runner`).

    Raises:
        ConfigError: ``--direct_num_workers`` or ``--direct_running_mode`` contradict
            ``--engines_per_gpu``, or the job service or worker pool cannot be reached.
    """
    options = PipelineOptions(argv)
    check_runner(options)
    if job.engines_per_gpu == 1:
        return options
    runner = options.view_as(StandardOptions).runner
    direct = options.view_as(DirectOptions)
    if options.view_as(PortableOptions).job_endpoint == "embed":
        # Measured: Beam's embedded job service asks the pool for one worker per job, whatever --direct_num_workers says.
        raise ConfigError(
            f"--engines_per_gpu {job.engines_per_gpu} needs that many worker processes, but --job_endpoint embed runs one; "
            f"on one machine use the DirectRunner (no --runner), on a cluster its job server with --sdk_worker_parallelism"
        )
    if runner not in (None, "DirectRunner", "BundleBasedDirectRunner", "FnApiRunner"):
        return options
    if direct.direct_num_workers not in (None, 1, job.engines_per_gpu) or direct.direct_running_mode == "multi_threading":
        raise ConfigError(
            f"--engines_per_gpu {job.engines_per_gpu} runs that many worker processes (one engine each), but "
            f"--direct_num_workers is {direct.direct_num_workers} and --direct_running_mode {direct.direct_running_mode}; leave them unset"
        )
    return PipelineOptions(argv, direct_num_workers=job.engines_per_gpu, direct_running_mode="multi_processing")


def in_process_runner(options: PipelineOptions) -> Any:
    """The runner for the default (or named) DirectRunner: Beam's in-process FnApiRunner, as the DirectRunner picks it
    for this job, without first trying Prism; None for every other runner (Beam builds it from ``--runner``).

    Beam's DirectRunner tries its Prism runner first, which downloads a binary from GitHub on first
    use: offline (an air-gapped host) that attempt fails and falls back to the FnApiRunner, and
    translating the job for it costs 0.1 to 0.3 s a run (measured on a 30-step pipeline).
    ``--runner PrismRunner`` still runs on Prism.
    """
    if options.view_as(StandardOptions).runner not in (None, "DirectRunner", "SwitchingDirectRunner"):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # As the DirectRunner does: the workers (processes with --direct_running_mode multi_processing) get the options.
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=JobServiceHandle.encode_pipeline_options(options.get_all_options()))
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))


REACH_TIMEOUT_S = 5.0
"""How long :func:`check_runner` waits for a job service or worker pool to accept a connection."""


def check_runner(options: PipelineOptions, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """A portable job's job service, and the SDK worker pool this process will call, must answer.

    Beam itself reports neither well: a job service that is not there fails after its
    ``--job_server_timeout`` (300 s) with a gRPC traceback, and an unreachable worker
    pool fails the job with one. Checked here, before any work: ``--job_endpoint``
    (unless ``embed``, the job service in this process) and, with ``embed``, the
    ``EXTERNAL`` worker pool (``--environment_config`` or ``external_service_address``),
    which this process calls to start the workers. A remote job service's workers are
    started by its cluster, where this process cannot see them: not checked.

    Raises:
        ConfigError: naming the endpoint, what failed and what to start.
    """
    portable = options.view_as(PortableOptions)
    endpoint = portable.job_endpoint
    if endpoint and endpoint != "embed":
        failure = _unreachable(endpoint, timeout_s)
        if failure:
            raise ConfigError(
                f"--job_endpoint {endpoint}: no Beam job service answers there ({failure}); start the runner's job server "
                f"(Flink's or Spark's beam job server) or give --job_endpoint embed to run the job service in this process"
            )
    pool = embedded_pool(options)
    if pool is not None:
        if not pool:
            raise ConfigError("--environment_type EXTERNAL needs the SDK worker pool's address: --environment_config HOST:PORT")
        failure = _unreachable(pool, timeout_s)
        if failure:
            port = pool.rpartition(":")[2] or "PORT"
            raise ConfigError(
                f"--environment_config {pool}: no SDK worker pool answers there ({failure}); start one with `python -m "
                f"apache_beam.runners.worker.worker_pool_main --service_port {port}`, with this environment's bin directory "
                f"first on PATH (the pool starts workers with the `python` it finds there)"
            )


def _unreachable(address: str, timeout_s: float) -> str | None:
    """Why nothing accepts a TCP connection at ``HOST:PORT``, or None when something does."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return f"not HOST:PORT, got {address!r}"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__


def for_workers(plan: TablePlan) -> TablePlan:
    """The plan with its local paths made absolute, for the pipeline's stages.

    SDK worker processes (a worker pool, a Flink or Spark task manager) need not share
    the launcher's working directory, where a relative path would name another place.
    The plan itself keeps the paths as given: they name the table in summaries,
    metrics and reports.
    """
    return dataclasses.replace(plan, input=_absolute(plan.input), output=_absolute(plan.output), vdir=_absolute(plan.vdir))


def _absolute(path: str) -> str:
    """A local path made absolute (against this process's working directory); a remote one as it is."""
    return path if fs.is_remote(path) else os.path.abspath(path)


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


def with_target_languages(task: TaskSpec, flag: str) -> TaskSpec:
    """The task fanned out into the languages of ``--target_languages`` (comma-separated codes) instead of its own.

    Raises:
        ConfigError: a code is not a canonical language code, or the task's fallback
            prompt cannot ask for a language without its own instruction.
    """
    codes = [code.strip() for code in flag.split(",") if code.strip()]
    if not codes:
        raise ConfigError(f"--target_languages must list language codes separated by commas, e.g. de,es,ja; got {flag!r}")
    checked = tuple(check_language_code("--target_languages", code) for code in codes)
    try:
        return dataclasses.replace(task, target_languages=checked)
    except ConfigError as e:
        raise ConfigError(f"--target_languages {flag}: task {task.name}: {e}") from e


def _language_detector(job: CacheJobOptions, task: TaskSpec) -> LanguageDetector | None:
    """The detector for keys without a language, or None when detection is off."""
    # A fanned-out key is asked for in each target language: the key's own language picks nothing.
    if job.detect_language == "off" or (job.detect_language == "auto" and (not task.languages or task.target_languages)):
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
    probe = fs.join(table, f".write-probe-{os.getpid()}")
    try:
        layout.write_text(probe, "ok")
    except Exception as e:  # any filesystem error here means the same thing to the user
        raise ConfigError(f"--output {table} is not writable: {e}") from e
    finally:
        # A full disk fails the write after the file was created: never leave the probe behind.
        if fs.exists(probe):
            fs.delete([probe])


def _check_published(table: str) -> None:
    """The published version, if any, must be whole before any work: the run reads it for reuse and churn."""
    published = layout.published_version(table)
    if published is not None:
        try:
            layout.verify_version(table, published[0])
        except TableError as e:
            raise TableError(f"--output {table}: the published {e}; roll back to a whole version first") from e
