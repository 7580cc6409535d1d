"""Shared fixtures: a tiny real model and its engines, shared by the session; corpora and tables; Redis."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

if TYPE_CHECKING:
    from bulkinfer.models.engine import EngineConfig

# vLLM CPU sizes its KV cache from this (GiB); set before any engine starts.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The engine tests first (a stable sort keeps each module's order): they are the long ones,
    # and two workers handed them last finish one long test apart.
    items.sort(key=lambda item: "engine" not in item.keywords)
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _beam_runs_offline() -> Iterator[None]:
    """Runs the tests' Beam pipelines on the FnApiRunner without trying Prism first.

    Beam's DirectRunner first tries the Prism runner, which it downloads from GitHub:
    offline that fails after about half a second per pipeline (some 80 in a run of the
    tests) and it falls back to the FnApiRunner. Now the tests skip the attempt, and
    run on the FnApiRunner whether the machine has network or not.
    """
    from apache_beam.runners.portability import prism_runner

    def unavailable(self: prism_runner.PrismRunner, pipeline: Any, options: Any) -> Any:
        raise RuntimeError("the tests run Beam pipelines on the FnApiRunner, not Prism")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prism_runner.PrismRunner, "run_pipeline", unavailable)
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama directory with a local BPE tokenizer."""
    from bulkinfer.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


# The environment the handler and the bench set before starting an engine (vLLM adds
# variables of its own on every start, the same each time).
_ENGINE_ENVIRONMENT = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING")


class EnginePool(dict):
    """The session's engines, keyed by their start arguments and vLLM CPU settings (JSON)."""

    def __init__(self) -> None:
        super().__init__()
        self.start_seconds: dict[str, float] = {}
        """How long each engine took to start, by the same key: what a test that reuses one saved."""

    def started_with(self, **kwargs: Any) -> list[str]:
        """The keys of the pooled engines started with these arguments (among others)."""
        return [key for key in self if all(json.loads(key)[0].get(name) == value for name, value in kwargs.items())]


@pytest.fixture(scope="session")
def shared_engines() -> Iterator[EnginePool]:
    """One real vLLM engine per distinct engine configuration, for the whole session.

    A start costs seconds (in process, on CPU) and the engine tests (handler, job,
    bench) start the same two configurations over and over: the tiny model plain, and
    with LoRA. While this fixture is active, ``vllm.LLM(**kwargs)`` hands back the
    engine started earlier with the same arguments and the same vLLM CPU settings,
    so the code under test runs as in production (it builds the arguments, counts its
    start, reads the engine's limits); only the physical start is reused. Shutting a
    pooled engine down waits for the end of the session. Worker processes of the
    multi-process runner start their own engines.

    Engines cache LoRA adapters by numeric id: tests sharing an engine must give one
    id one adapter (``tiny_loras`` in order, as ``--adapter`` numbers them).
    """
    import vllm

    from bulkinfer.models import vllm_handler

    start, shutdown = vllm.LLM, vllm_handler.shutdown_engine
    engines = EnginePool()

    def pooled(**kwargs: Any) -> Any:
        settings = {name: os.environ.get(name) for name in _ENGINE_ENVIRONMENT}
        key = json.dumps([kwargs, settings], sort_keys=True, default=str)
        if key not in engines:
            began = time.perf_counter()
            engines[key] = start(**kwargs)
            engines.start_seconds[key] = time.perf_counter() - began
        return engines[key]

    def shutdown_unless_pooled(llm: Any) -> None:
        if all(llm is not engine for engine in engines.values()):
            shutdown(llm)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vllm, "LLM", pooled)
        patch.setattr(vllm_handler, "shutdown_engine", shutdown_unless_pooled)
        yield engines
    # One after the other: CPU engines run in this process and share torch.distributed's global
    # groups, which each shutdown tears down (two at once raced: KeyError in destroy_process_group).
    for engine in engines.values():
        shutdown(engine)


@pytest.fixture(autouse=True)
def _engines_only_in_engine_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test without the ``engine`` marker fails if it starts a vLLM engine, so ``-m "not engine"`` is fast for sure."""
    if request.node.get_closest_marker("engine") is not None:
        return
    from bulkinfer.models.vllm_handler import VLLMHandler

    def refuse(self: VLLMHandler) -> None:
        raise AssertionError(f"{request.node.nodeid} starts a vLLM engine: mark it with @pytest.mark.engine")

    monkeypatch.setattr(VLLMHandler, "_start_engine", refuse)


@pytest.fixture(scope="session")
def tiny_loras(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA adapters (PEFT format) for the tiny model, with different seeded random weights."""
    from bulkinfer.models.tiny import build_tiny_lora

    root = tmp_path_factory.mktemp("tiny-loras")
    return [build_tiny_lora(tiny_model, root / f"lora{seed}", seed=seed) for seed in (1, 2)]


@pytest.fixture(scope="session")
def lora_engine_config(tiny_model: Path, tiny_loras: list[Path]) -> EngineConfig:
    """The tiny model's engine with room for both ``tiny_loras``: the handler tests' one engine.

    Requests without an adapter run the base model on it, so the handler tests that need
    none share it with those that do. (It is also the engine the job starts for
    ``--adapter`` with both, so that test reuses it too.)
    """
    from bulkinfer.models.engine import EngineConfig, load_adapter

    rank = max(load_adapter(str(path), 0, str(tiny_model)).rank for path in tiny_loras)
    return EngineConfig(model=str(tiny_model), max_model_len=512, max_lora_rank=rank, max_loras=len(tiny_loras))


def write_corpus(path: Path, queries: list, **columns: list) -> Path:
    """Writes a Parquet corpus with a ``query`` column (and others) to ``path``."""
    table = pa.table({"query": pa.array(queries, pa.string()), **columns})
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real ``redis-server`` on a free loopback port, no persistence; stopped after the session.

    Skipped where it is not installed, except under CI (``BULKINFER_REQUIRE_REDIS=1``,
    set by ``.ci/run``), where a missing server is a failure, not a quiet skip.
    """
    from bulkinfer.testing import redis_server

    try:
        with redis_server(tmp_path_factory.mktemp("redis")) as url:
            yield url
    except FileNotFoundError as e:
        if os.environ.get("BULKINFER_REQUIRE_REDIS") == "1":
            pytest.fail(f"{e}; BULKINFER_REQUIRE_REDIS=1 forbids skipping the Redis tests")
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def worker_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Beam SDK worker pool on a free loopback port, for jobs on the PortableRunner; stopped after the session.

    Its workers are separate processes started with this environment's ``python``, in a
    working directory of their own (not the tests'), with the repository on their
    ``PYTHONPATH`` so that they can load the tests' fake handlers. Stopping it stops its
    workers and their engine processes too (one process group).
    """
    from bulkinfer.testing import beam_worker_pool

    root = str(Path(__file__).resolve().parent.parent)
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        # The pool gives its workers a stdout pipe it never reads: vLLM's log (stdout by default) would fill it and block.
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
    }
    with beam_worker_pool(tmp_path_factory.mktemp("worker-pool"), env=env) as pool:
        yield pool


def portable_flags(pool: Any) -> list[str]:
    """The Beam flags that run a job on the PortableRunner, its job service in this process, its workers from ``pool``."""
    return ["--runner", "PortableRunner", "--job_endpoint", "embed", "--environment_type", "EXTERNAL", "--environment_config", pool.address]


def task_allowing_failures(directory: Path, name: str) -> str:
    """A copy of a built-in task spec with ``gates.max_failed_rate: 1.0``; returns its path.

    For logic tests whose tiny corpus is mostly bad rows on purpose (dead-letter
    accounting, reuse of dead letters): the failure-rate gate would rightly refuse
    those versions, and what they test is what happens to the rows.
    """
    from importlib import resources

    import yaml

    raw = yaml.safe_load((resources.files("bulkinfer.tasks.builtin") / f"{name}.yaml").read_text(encoding="utf-8"))
    raw.setdefault("gates", {})["max_failed_rate"] = 1.0
    path = directory / f"{name}-allowing-failures.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return str(path)


def ungated_task(directory: Path, name: str = "synonyms") -> str:
    """A copy of a built-in task spec without its quality gates (and the failure-rate gate lifted); returns its path.

    For plumbing tests on the tiny random-weight model: it answers noise (every answer
    runs to ``max_tokens``), so a production gate rightly refuses its versions, and
    what those tests check is the job around the engine, not answer quality. Their
    corpora also hold a key over the context on purpose.
    """
    from importlib import resources

    import yaml

    raw = yaml.safe_load((resources.files("bulkinfer.tasks.builtin") / f"{name}.yaml").read_text(encoding="utf-8"))
    raw["gates"] = {"max_failed_rate": 1.0}
    path = directory / f"{name}-ungated.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return str(path)


def write_version(table: Path, version: str, answers: dict[str, list[str]], *, publish: bool = True, store: bool = True) -> Path:
    """Writes one complete version of a synonyms table without running the job; returns its directory.

    Rows carry every prediction column with fixed provenance (``run_id`` is the
    version); ``store`` also builds its ``store.sqlite`` and match index the way the job does.
    """
    from bulkinfer.format import layout
    from bulkinfer.lookup import store as stores

    vdir = table / "versions" / version
    vdir.mkdir(parents=True)
    keys = sorted(answers)
    n = len(keys)
    rows = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "query": pa.array(keys, pa.string()),
            "synonyms": pa.array([answers[k] for k in keys], pa.list_(pa.string())),
            "raw_output": pa.array([", ".join(answers[k]) for k in keys], pa.string()),
            "source_rows": pa.array([1] * n, pa.int64()),
            "model": ["fake-model"] * n,
            "model_digest": ["digest"] * n,
            "task": ["synonyms"] * n,
            "task_fingerprint": ["tf"] * n,
            "fingerprint": ["fp"] * n,
            "engine": ["none"] * n,
            "run_id": [version] * n,
        }
    )
    pq.write_table(rows, vdir / "predictions-00000-of-00001.parquet")
    manifest = {"version": version, "output_column": "synonyms", "output_kind": "list", "run_id": version, "counts": {"keys": n}}
    layout.write_manifest(str(vdir), manifest)
    if store:
        from bulkinfer.lookup.match import write_match_index

        stores.write_store(str(table), version)
        write_match_index(str(table), version)
    if publish:
        layout.publish(str(table), version)
    return vdir
