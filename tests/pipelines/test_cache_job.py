"""The cache job end to end with a fake handler: layout, counts, dead letters, validation, lookup."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from bulkinfer.errors import ConfigError, InputError, TableError
from bulkinfer.format import layout
from bulkinfer.lookup.table import open_table
from bulkinfer.pipelines.cache_job import run
from tests.conftest import task_allowing_failures, write_corpus
from tests.fakes import FakeHandler

QUERIES = ["Covid Vaccine", "  covid   VACCINE ", "cheap flights", "Cheap Flights", "used cars", None, "", "   ", "\x00\x07"]


def _run(tmp_path, queries=QUERIES, handler=None, extra=(), task="synonyms"):
    corpus = write_corpus(tmp_path / "queries.parquet", queries)
    argv = ["--task", task, "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", "fake-model", *extra]
    return run(argv, model_handler=handler or FakeHandler())


def test_publishes_a_versioned_table(tmp_path):
    manifest = _run(tmp_path, extra=["--run_id", "r1"])
    table_dir = tmp_path / "table"
    vdir = table_dir / "versions" / "r1"
    assert (table_dir / "CURRENT").read_text().strip() == "r1"
    assert json.loads((vdir / "manifest.json").read_text()) == manifest
    assert sorted(p.name.split("-")[0] for p in vdir.glob("*.parquet")) == ["dead_letter", "predictions"]
    assert not list(table_dir.glob(".CURRENT*")), "temporary CURRENT left behind"
    assert manifest["counts"] == {
        "rows_in": 9,
        "rows_in_table": 5,
        "rows_dead": 4,
        "rows_not_sampled": 0,
        "keys": 3,
        "dead_letter_records": 4,
        "reused": 0,
        "reused_dead_letters": 0,
        "resumed_from_checkpoints": 0,
        "generated": 3,
        "engine_starts": 0,  # the fake handler starts no engine
    }
    assert manifest["dead_letter_reasons"] == {"empty_query": 3, "null_query": 1}
    assert manifest["task"] == "synonyms" and manifest["model"] == "fake-model" and manifest["run_id"] == "r1"

    rows = pq.read_table(sorted(vdir.glob("predictions-*.parquet"))).to_pylist()
    assert len(rows) == 3
    for row in rows:
        assert row["run_id"] == "r1" and row["model"] == "fake-model" and row["task"] == "synonyms"
        assert row["task_fingerprint"] and row["fingerprint"] and row["model_digest"]
    by_key = {row["key"]: row for row in rows}
    assert by_key["covid vaccine"]["source_rows"] == 2
    assert by_key["covid vaccine"]["synonyms"] == ["covid vaccine alt", "other covid vaccine"]
    assert by_key["covid vaccine"]["raw_output"] == " covid vaccine alt, other covid vaccine"

    dead = pq.read_table(sorted(vdir.glob("dead_letter-*.parquet"))).to_pylist()
    assert len(dead) == 4
    assert all(d["reason"] and d["message"] and d["row"] and d["run_id"] == "r1" for d in dead)


def test_lookup_api_normalises_like_the_job(tmp_path):
    _run(tmp_path)
    table = open_table(str(tmp_path / "table"))
    assert len(table) == 3
    hit = table.get("ＣＯＶＩＤ  ｖａｃｃｉｎｅ")
    assert hit is not None and hit["key"] == "covid vaccine" and hit["synonyms"] == ["covid vaccine alt", "other covid vaccine"]
    assert table.get("nothing like it") is None
    assert "  CHEAP flights" in table
    assert [r and r["key"] for r in table.get_many(["used cars", "nope"])] == ["used cars", None]


def test_prompt_too_long_and_unparseable_are_dead_lettered_per_key(tmp_path):
    queries = ["lemon", "Lemon", "plum", "banana split"]
    handler = FakeHandler(answers={"lemon": " hesperidium", "plum": " not a fruit type"}, too_long=["banana split"])
    manifest = _run(tmp_path, queries, handler, task=task_allowing_failures(tmp_path, "classify"))
    assert manifest["counts"]["rows_in_table"] == 2 and manifest["counts"]["keys"] == 1
    assert manifest["dead_letter_reasons"] == {"prompt_too_long": 1, "unparseable_output": 1}
    assert open_table(str(tmp_path / "table")).get("LEMON")["label"] == "hesperidium"
    dead = {d["key"]: d for d in pq.read_table(sorted((tmp_path / "table").glob("versions/*/dead_letter-*.parquet"))).to_pylist()}
    assert dead["plum"]["raw_output"] == " not a fruit type" and dead["plum"]["stage"] == "parse_predictions"
    assert dead["banana split"]["stage"] == "generate"


def test_rerun_publishes_a_new_version_and_refuses_a_published_run_id(tmp_path):
    _run(tmp_path, extra=["--run_id", "r1"])
    _run(tmp_path, extra=["--run_id", "r2"])
    assert layout.read_current(str(tmp_path / "table")) == "r2"
    assert open_table(str(tmp_path / "table"), version="r1").version == "r1"
    # The same run again (a scheduler's retry) is done already; another task under that run id is refused.
    assert _run(tmp_path, extra=["--run_id", "r2"])["version"] == "r2"
    with pytest.raises(ConfigError, match="run id r2 is already the published version .*fingerprint differs"):
        _run(tmp_path, extra=["--run_id", "r2"], task="classify")


def _corrupt(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    return path


@pytest.mark.parametrize(
    ("make_input", "extra", "error", "match"),
    [
        (lambda t: t / "missing.parquet", [], InputError, r"no such file"),
        (lambda t: write_corpus(t / "q.parquet", ["a"]), ["--query_column", "text"], InputError, r"has no column 'text'.*columns: query"),
        (
            lambda t: write_corpus(
                t / "q.parquet",
                [],
            ),
            [],
            InputError,
            r"has no rows",
        ),
        (_corrupt, [], InputError, r"is not a readable Parquet file"),
        (lambda t: write_corpus(t / "q.parquet", ["a"], n=[1]), ["--query_column", "n"], InputError, r"column 'n' is int64, not text"),
        (lambda t: write_corpus(t / "q.parquet", ["a"]), ["--task", "nope"], ConfigError, r"unknown task 'nope'"),
        (lambda t: write_corpus(t / "q.parquet", ["a"]), ["--run_id", "../x"], ConfigError, r"--run_id must be"),
        (lambda t: write_corpus(t / "q.parquet", ["a"]), ["--batch_size", "0"], ConfigError, r"--batch_size must be >= 1"),
        (lambda t: write_corpus(t / "q.parquet", ["a"]), ["--max_model_len", "48"], ConfigError, r"--max_model_len 48 leaves no room"),
        (lambda t: write_corpus(t / "q.parquet", ["a"]), ["--checkpoint_rows", "0"], ConfigError, r"--checkpoint_rows must be >= 1"),
        (lambda t: write_corpus(t / "q.parquet", ["a"]), ["--keep", "0"], ConfigError, r"--keep must be >= 1"),
        (lambda t: write_corpus(t / "q.parquet", ["a"]), ["--sample", "0"], ConfigError, r"--sample must be >= 1"),
        (lambda t: write_corpus(t / "q.parquet", ["a"]), ["--adapter", "/no/such/lora"], ConfigError, r"has no adapter_config.json"),
        (
            lambda t: write_corpus(t / "q.parquet", ["a"]),
            ["--adapter", "bad name=/x"],
            ConfigError,
            r"the name must be letters",
        ),
    ],
)
def test_bad_input_fails_before_any_work(tmp_path, make_input, extra, error, match):
    argv = ["--task", "synonyms", "--input", str(make_input(tmp_path)), "--output", str(tmp_path / "table"), *extra]
    with pytest.raises(error, match=match):
        run(argv, model_handler=FakeHandler())
    assert not (tmp_path / "table" / "versions").exists()


def test_output_overlapping_the_input_is_refused(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_corpus(corpus / "q.parquet", ["a"])
    with pytest.raises(ConfigError, match=r"overlap"):
        run(["--task", "synonyms", "--input", str(corpus), "--output", str(corpus), "--model", "m"], model_handler=FakeHandler())


class _LosingHandler(FakeHandler):
    """Loses one answer per batch: a bug the row accounting must catch."""

    def run_inference(self, batch, model, inference_args=None):
        return super().run_inference(batch, model, inference_args)[1:]


def test_row_accounting_mismatch_fails_instead_of_publishing(tmp_path):
    _run(tmp_path, extra=["--run_id", "r1"])
    with pytest.raises(RuntimeError, match=r"row accounting failed: 9 input rows, but \d+ behind table keys"):
        _run(tmp_path, extra=["--run_id", "r2", "--full"], handler=_LosingHandler())
    assert layout.read_current(str(tmp_path / "table")) == "r1"


def test_missing_model_path_is_a_config_error(tmp_path):
    corpus = write_corpus(tmp_path / "q.parquet", ["a"])
    with pytest.raises(ConfigError, match=r"--model /no/such/model: no such directory"):
        run(["--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "t"), "--model", "/no/such/model"])
    not_a_model = tmp_path / "empty-dir"
    not_a_model.mkdir()
    with pytest.raises(ConfigError, match=r"has no config.json"):
        run(["--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "t"), "--model", str(not_a_model)])


def test_unwritable_output_is_a_config_error(tmp_path):
    corpus = write_corpus(tmp_path / "q.parquet", ["a"])
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"is not writable"):
        run(["--task", "synonyms", "--input", str(corpus), "--output", str(blocker / "table"), "--model", "m"], model_handler=FakeHandler())


def test_directory_input_reads_every_parquet_file(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_corpus(corpus / "part-0.parquet", ["a", "b"])
    write_corpus(corpus / "part-1.parquet", ["B", "c"])
    manifest = run(
        ["--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "t"), "--model", "m"], model_handler=FakeHandler()
    )
    assert manifest["counts"]["rows_in"] == 4 and manifest["counts"]["keys"] == 3


def test_open_table_without_a_published_version(tmp_path):
    with pytest.raises(TableError, match=r"has no published version"):
        open_table(str(tmp_path))


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "bulkinfer.cli", *args], capture_output=True, text=True, input=stdin, timeout=120)


def test_cli_lookup_prints_one_json_object_per_query(tmp_path):
    _run(tmp_path)
    done = _cli("lookup", "--table", str(tmp_path / "table"), "Covid Vaccine", "  cheap   FLIGHTS ", "unknown")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(d["query"], d["key"], d["found"]) for d in lines] == [
        ("Covid Vaccine", "covid vaccine", True),
        ("  cheap   FLIGHTS ", "cheap flights", True),
        ("unknown", "unknown", False),
    ]
    assert lines[0]["synonyms"] == ["covid vaccine alt", "other covid vaccine"] and lines[2]["synonyms"] == []
    from_stdin = _cli("lookup", "--table", str(tmp_path / "table"), stdin="used cars\n")
    assert json.loads(from_stdin.stdout)["found"] is True


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (
            ["run", "--task", "synonyms", "--input", "/no/such.parquet", "--output", "/tmp/x"],
            "bulkinfer: error: --input /no/such.parquet: no such file",
        ),
        (["lookup", "--table", "/no/such/table", "x"], "bulkinfer: error: /no/such/table has no published version"),
    ],
)
def test_cli_user_errors_are_one_line_without_traceback(args, match):
    done = _cli(*args)
    assert done.returncode == 2
    assert match in done.stderr and "Traceback" not in done.stderr


def test_sample_runs_the_same_keys_every_time_and_accounts_for_the_rest(tmp_path):
    queries = [f"query {i}" for i in range(40)] + ["Query 1", None]
    first = _run(tmp_path, queries=queries, extra=["--sample", "10", "--run_id", "s1"])
    counts = first["counts"]
    assert counts["keys"] == 10 and counts["generated"] == 10 and first["sample"] == 10
    assert counts["rows_in_table"] + counts["rows_dead"] + counts["rows_not_sampled"] == counts["rows_in"] == 42
    assert counts["rows_dead"] == 1
    sampled = _keys(tmp_path / "table", "s1")
    assert len(sampled) == 10
    # Another run over a corpus with more rows of the same keys samples the same keys.
    other = tmp_path / "other"
    other.mkdir()
    again = _run(other, queries=list(reversed(queries)) + ["QUERY 3"], extra=["--sample", "10", "--run_id", "s2"])
    assert again["counts"]["keys"] == 10 and _keys(other / "table", "s2") == sampled


def _keys(table_dir, version):
    return {
        row["key"] for shard in (table_dir / "versions" / version).glob("predictions-*.parquet") for row in pq.read_table(shard).to_pylist()
    }


def test_the_default_runner_never_tries_prism(tmp_path, monkeypatch):
    # Beam's DirectRunner tries Prism first (a download from GitHub), then falls back to the FnApiRunner.
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability import prism_runner
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from bulkinfer.pipelines.plan import in_process_runner

    tried = []

    def record(self, pipeline, options):
        tried.append(options)
        raise RuntimeError("no Prism here")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", record)
    _run(tmp_path, extra=["--run_id", "r1"])
    assert tried == []
    assert isinstance(in_process_runner(PipelineOptions(["--runner", "DirectRunner"])), FnApiRunner)
    assert in_process_runner(PipelineOptions(["--runner", "PrismRunner"])) is None
    assert in_process_runner(PipelineOptions(["--runner", "PortableRunner"])) is None
    # The options reach worker processes the way the DirectRunner passes them.
    runner = in_process_runner(PipelineOptions(["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]))
    assert runner._provision_info.provision_info.pipeline_options["beam:option:direct_num_workers:v1"] == "2"
