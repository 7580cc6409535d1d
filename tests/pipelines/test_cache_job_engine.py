"""The whole job on a real vLLM engine (tiny local model), in-process and with 2 worker processes."""

from __future__ import annotations

import json
import time

import pyarrow.parquet as pq
import pytest

from bulkinfer.cli import main
from bulkinfer.lookup.table import open_table
from bulkinfer.pipelines.cache_job import run
from tests.conftest import portable_flags, ungated_task, write_corpus

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("shared_engines")]

LONG = " ".join(["vaccine"] * 700)
QUERIES = ["Covid Vaccine", "covid   vaccine", "cheap flights", "CHEAP FLIGHTS ", "used cars", "vuelos baratos", "中古車", None, " ", LONG]


def _predictions(table_dir):
    shards = sorted(table_dir.glob("versions/*/predictions-*.parquet"))
    assert shards
    rows = [row for shard in shards for row in pq.read_table(shard).to_pylist()]
    return {row["key"]: (row["raw_output"], row["synonyms"]) for row in rows}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    return write_corpus(directory / "queries.parquet", QUERIES)


def _argv(corpus, out, model, *extra):
    return ["--task", ungated_task(corpus.parent), "--input", str(corpus), "--output", str(out), "--model", str(model),
            "--max_model_len", "512", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def in_process(tiny_model, corpus, tmp_path_factory, shared_engines):
    out = tmp_path_factory.mktemp("in-process") / "table"
    started = len(shared_engines)
    manifest = run(_argv(corpus, out, tiny_model))
    # The rerun test compares its wall time with this run's, which must include a real engine start.
    assert len(shared_engines) == started + 1, "the first job run must start its engine: no earlier test may start this configuration"
    return out, manifest


def test_real_engine_job_publishes_every_row_accounted_for(in_process):
    out, manifest = in_process
    counts = manifest["counts"]
    assert counts["rows_in"] == len(QUERIES)
    assert counts["keys"] == 5 and counts["generated"] == 5
    assert counts["rows_in_table"] + counts["rows_dead"] == counts["rows_in"]
    assert manifest["dead_letter_reasons"] == {"empty_query": 1, "null_query": 1, "prompt_too_long": 1}
    assert manifest["engine"].startswith("vllm") and counts["engine_starts"] == 1
    table = open_table(str(out))
    row = table.get("COVID VACCINE")
    assert row is not None and row["source_rows"] == 2 and row["raw_output"] and row["output_tokens"] > 0
    assert isinstance(row["synonyms"], list)


def test_multi_process_direct_runner_gives_the_same_table(in_process, tiny_model, corpus, tmp_path):
    out, _ = in_process
    workers = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    manifest = run(_argv(corpus, tmp_path / "table", tiny_model, *workers))
    assert manifest["counts"]["keys"] == 5
    assert manifest["counts"]["rows_in_table"] + manifest["counts"]["rows_dead"] == len(QUERIES)
    assert _predictions(tmp_path / "table") == _predictions(out)


def test_pretokenized_token_budget_job_gives_the_same_table(in_process, tiny_model, corpus, tmp_path):
    out, first = in_process
    manifest = run(_argv(corpus, tmp_path / "table", tiny_model, "--pretokenize", "on", "--max_batch_tokens", "700"))
    assert manifest["counts"]["generated"] == first["counts"]["generated"]
    assert manifest["dead_letter_reasons"] == first["dead_letter_reasons"], "prompt_too_long is still found"
    assert _predictions(tmp_path / "table") == _predictions(out)


def test_rerun_of_an_unchanged_corpus_starts_no_engine(in_process, tiny_model, corpus):
    out, first = in_process
    again = run(_argv(corpus, out, tiny_model, "--run_id", "rerun"))
    assert again["counts"]["generated"] == 0 and again["counts"]["engine_starts"] == 0
    assert again["counts"]["reused"] == first["counts"]["keys"]
    assert again["counts"]["reused_dead_letters"] == 1, "the too-long prompt keeps its dead letter without a tokenizer pass"
    assert again["wall_seconds"] < first["wall_seconds"]


def test_several_lora_adapters_one_engine_one_table_each(in_process, tiny_model, tiny_loras, corpus, tmp_path, capsys):
    base_out, _ = in_process
    out = tmp_path / "tuned"
    adapters = [f"--adapter=lora{i}={path}" for i, path in enumerate(tiny_loras)]
    result = run(_argv(corpus, out, tiny_model, *adapters, "--run_id", "v1"))
    manifests = result["tables"]
    assert sorted(manifests) == [str(out / "lora0"), str(out / "lora1")]
    first, second = manifests[str(out / "lora0")], manifests[str(out / "lora1")]
    assert first["counts"]["engine_starts"] == 1 and second["counts"]["engine_starts"] == 0, "the second table reuses the engine"
    assert first["counts"]["generated"] == second["counts"]["generated"] == 5
    tables = {name: _predictions(out / name) for name in ("lora0", "lora1")}
    base = _predictions(base_out)
    assert tables["lora0"].keys() == tables["lora1"].keys() == base.keys()
    assert tables["lora0"] != base and tables["lora1"] != base and tables["lora0"] != tables["lora1"]
    rows = pq.read_table(sorted((out / "lora1").glob("versions/v1/predictions-*.parquet"))).to_pylist()
    assert rows and {(r["adapter"], len(r["adapter_digest"])) for r in rows} == {("lora1", 16)}
    assert first["adapter_path"] == str(tiny_loras[0]) and first["task_fingerprint"] != second["task_fingerprint"]

    # The rerun through the command line: one summary line per adapter table, nothing generated.
    assert main(["run", *_argv(corpus, out, tiny_model, *adapters, "--run_id", "v2")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["table"] for line in lines] == [str(out / "lora0"), str(out / "lora1")]
    assert [line["counts"]["generated"] for line in lines] == [0, 0]
    assert [line["counts"]["engine_starts"] for line in lines] == [0, 0]


def test_chat_task_on_a_model_without_chat_template_fails_before_any_work(tiny_model, corpus, tmp_path):
    import shutil

    from bulkinfer.errors import ConfigError

    plain = tmp_path / "no-template"
    shutil.copytree(tiny_model, plain)
    (plain / "chat_template.jinja").unlink()
    spec = tmp_path / "chat.yaml"
    spec.write_text("name: chatsyn\noutput: list\nformat: chat\ninstruction: List synonyms.\ntemplate: {query: '{query}'}\n")
    with pytest.raises(ConfigError, match="has format: chat, but --model .* has no chat template"):
        run(["--task", str(spec), "--input", str(corpus), "--output", str(tmp_path / "t"), "--model", str(plain)])
    assert not (tmp_path / "t" / "CURRENT").exists()


CHAT_JSON_SPEC = """\
name: synonyms_json
output: list
format: chat
instruction: Give other ways to search for the query, as JSON.
template: {query: "{query}"}
structured:
  json_schema:
    type: object
    properties: {synonyms: {type: array, items: {type: string, maxLength: 12}, minItems: 1, maxItems: 3}}
    required: [synonyms]
parser: {json_field: synonyms}
sampling: {max_tokens: 200}
# The corpus holds one query over the context on purpose (1 key of 6).
gates: {min_valid_rate: 1.0, max_failed_rate: 0.2}
"""


def test_chat_task_with_json_schema_parses_every_answer_end_to_end(tiny_model, corpus, tmp_path):
    spec = tmp_path / "synonyms_json.yaml"
    spec.write_text(CHAT_JSON_SPEC)
    out = tmp_path / "table"
    argv = ["--task", str(spec), "--input", str(corpus), "--output", str(out), "--model", str(tiny_model), "--max_model_len", "512"]
    manifest = run(argv)
    assert manifest["quality"]["valid_rate"] == 1.0 and manifest["counts"]["generated"] == 5
    assert "unparseable_output" not in manifest["dead_letter_reasons"]
    rows = [row for shard in out.glob("versions/*/predictions-*.parquet") for row in pq.read_table(shard).to_pylist()]
    assert rows and all(row["raw_output"].startswith('{"synonyms":[') for row in rows)


def test_portable_runner_worker_process_starts_its_own_engine(in_process, tiny_model, corpus, tmp_path, worker_pool, monkeypatch, capsys):
    """``bulkinfer run`` on the PortableRunner: the stages, the engine included, run in a worker the pool started."""
    from bulkinfer.models.vllm_handler import VLLMHandler
    from bulkinfer.testing import group_members

    out, _ = in_process

    def not_here(self: VLLMHandler) -> None:
        raise AssertionError("the engine started in the launching process, not in a worker")

    # Only this process's class: the worker imports its own, so its engine start is untouched.
    monkeypatch.setattr(VLLMHandler, "_start_engine", not_here)
    argv = _argv(corpus, tmp_path / "table", tiny_model, *portable_flags(worker_pool), "--run_id", "p1")
    assert main(["run", *argv]) == 0
    (summary,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    counts = summary["counts"]
    assert counts["engine_starts"] == 1 and counts["generated"] == 5 and counts["keys"] == 5
    assert counts["rows_in_table"] + counts["rows_dead"] == len(QUERIES)
    assert _predictions(tmp_path / "table") == _predictions(out)
    # The job's end stops its worker, and with it the engine's processes.
    deadline = time.monotonic() + 60
    while worker_pool.workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert worker_pool.workers() == [], f"left running after the job: {worker_pool.workers()}"
    assert group_members(worker_pool.pid) == [worker_pool.pid]
