"""Throughput flags of the job: batching, engines per GPU, and the bench task's ignore_eos (fake handler, no engine)."""

from __future__ import annotations

import dataclasses

import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from bulkinfer.errors import ConfigError
from bulkinfer.models.engine import EngineConfig
from bulkinfer.pipelines.cache_job import CacheJobOptions, run
from bulkinfer.pipelines.plan import runner_options
from bulkinfer.tasks.spec import SamplingSpec, load_task, task_from_dict
from tests.conftest import write_corpus
from tests.fakes import FakeHandler


def _argv(tmp_path, *extra):
    corpus = write_corpus(tmp_path / "queries.parquet", ["covid vaccine", "cheap flights"])
    return ["--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", "fake-model", *extra]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--batch_size", "8", "--max_batch_tokens", "4096"], "give one of them"),
        (["--max_batch_tokens", "0"], "--max_batch_tokens must be >= 1, got 0"),
        (["--engines_per_gpu", "0"], r"engines_per_gpu must be in \[1, 16\], got 0"),
        (["--engines_per_gpu", "2", "--direct_num_workers", "3"], "leave them unset"),
    ],
)
def test_bad_throughput_flags_fail_before_any_work(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        run(_argv(tmp_path, *extra), model_handler=FakeHandler())
    assert not (tmp_path / "table" / "CURRENT").exists()


def test_engines_per_gpu_runs_one_worker_process_per_engine():
    argv = ["--engines_per_gpu", "3"]
    parsed = PipelineOptions(argv)
    options = runner_options(argv, parsed.view_as(CacheJobOptions))
    direct = options.view_as(DirectOptions)
    assert direct.direct_num_workers == 3 and direct.direct_running_mode == "multi_processing"
    assert parsed.view_as(DirectOptions).direct_num_workers == 1, "the parsed options are left as they were"
    single = runner_options([], PipelineOptions([]).view_as(CacheJobOptions))
    assert single.view_as(DirectOptions).direct_num_workers == 1


def test_each_engine_gets_its_kv_budget_and_a_share_of_gpu_memory():
    kwargs = EngineConfig(model="m", kv_cache_gib=10, gpu_memory_utilization=0.9, engines_per_gpu=3).llm_kwargs(on_cpu=False)
    assert kwargs["kv_cache_memory_bytes"] == 10 * 2**30 and kwargs["gpu_memory_utilization"] == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="needs tensor_parallel_size 1, got 2"):
        EngineConfig(model="m", engines_per_gpu=2, tensor_parallel_size=2)


def test_ignore_eos_is_validated_and_leaves_existing_fingerprints_alone():
    task = load_task("synonyms")
    assert task.sampling.ignore_eos is False
    spec = dataclasses.asdict(task)
    assert task_from_dict(spec).fingerprint() == task.fingerprint()
    spec["sampling"]["ignore_eos"] = True
    forced = task_from_dict(spec)
    assert forced.sampling.ignore_eos and forced.fingerprint() != task.fingerprint()
    spec["sampling"]["ignore_eos"] = "yes"
    with pytest.raises(ConfigError, match="ignore_eos"):
        task_from_dict(spec)
    assert SamplingSpec(ignore_eos=True).ignore_eos
