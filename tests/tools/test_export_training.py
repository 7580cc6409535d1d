"""bulkinfer.tools.export_training and `bulkinfer export-training`: real tables in, fine-tuning files read back."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bulkinfer.cli import main as cli_main
from bulkinfer.errors import ConfigError, TableError
from bulkinfer.format import layout
from bulkinfer.tasks.prompts import render_prompt
from bulkinfer.tasks.spec import load_task, task_from_dict
from bulkinfer.tools.export_training import answer_text, completion_lead, export_training, prompt_parts
from tests.bulkinfer.made_tables import made_tables

# "echo one" answered "flu jab, something": the parser dropped the copied example item, "something" is exported.
SYNONYMS_KEPT = ["blue hat", "cheap flights", "covid vaccine", "echo one", "only a", "red shoes", "used cars"]


@pytest.fixture(scope="session")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return made_tables(tmp_path_factory)


def _read(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_messages_zero_shot_filters_sorts_and_carries_provenance(tables, tmp_path):
    out = tmp_path / "sft.jsonl"
    result = export_training(tables["syn_a"], str(out))
    assert (result.version, result.format, result.prompt, result.model) == ("a1", "messages", "zero_shot", "teacher")
    assert (result.rows, result.written, result.dropped) == (9, 7, {"empty_output": 1, "echo": 1})
    records = _read(out)
    assert [r["metadata"]["key"] for r in records] == SYNONYMS_KEPT, "sorted by key; empty and echoing rows dropped"
    task = load_task("synonyms")
    for record in records:
        system, user, assistant = record["messages"]
        assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
        assert system["content"] == task.instruction.strip()
        assert user["content"] == f"query: {record['metadata']['key']}\nsynonyms:"
        for example in task.examples:
            assert example.input not in user["content"] and example.output not in user["content"]
        meta = record["metadata"]
        assert (meta["version"], meta["run_id"], meta["model"], meta["task"]) == ("a1", "a1", "teacher", "synonyms")
        assert meta["task_fingerprint"] == task.fingerprint() and meta["source_rows"] == 1
    by_key = {r["metadata"]["key"]: r for r in records}
    assert by_key["covid vaccine"]["messages"][2]["content"] == "covid shot, coronavirus vaccine, covid jab"


def test_prompt_completion_with_the_task_prompt_reads_like_a_shown_example(tables, tmp_path):
    out = tmp_path / "sft.jsonl"
    export_training(tables["lab_a"], str(out), fmt="prompt_completion", prompt="task", metadata=False)
    records = _read(out)
    assert [set(r) for r in records] == [{"prompt", "completion"}] * 5
    task = load_task("classify")
    by_prompt = {r["prompt"]: r["completion"] for r in records}
    assert by_prompt[render_prompt(task, "lemon")] == " hesperidium"
    assert by_prompt[render_prompt(task, "apple")] == " pome"
    # prompt + completion is the text an example line shows: "orange: hesperidium"
    assert task.template.example.format(input="lemon", output="hesperidium").strip() in render_prompt(task, "lemon") + " hesperidium"


@pytest.mark.parametrize("file_type", [".jsonl", ".parquet"])
def test_chat_task_exports_its_turns_and_json_answers(tables, tmp_path, file_type):
    spec = task_from_dict(layout.read_manifest(layout.version_dir(tables["chat_json"], "c1"))["task_spec"])
    assert spec.format == "chat" and spec.structured.json_schema is not None
    out = tmp_path / f"messages{file_type}"
    result = export_training(tables["chat_json"], str(out), prompt="task")
    assert (result.written, result.dropped) == (1, {"empty_output": 1, "echo": 0})
    (record,) = _read(out)
    assert record["messages"] == [
        {"role": "system", "content": "List other ways people search for the same thing."},
        {"role": "user", "content": "query: laptop bag\nanswer:"},
        {"role": "assistant", "content": '{"synonyms": ["notebook bag", "laptop case"]}'},
        {"role": "user", "content": "query: covid vaccine\nanswer:"},
        {"role": "assistant", "content": '{"synonyms": ["covid shot", "covid jab"]}'},
    ]
    pairs = tmp_path / f"pairs{file_type}"
    export_training(tables["chat_json"], str(pairs), fmt="prompt_completion")
    (pair,) = _read(pairs)
    assert pair["prompt"] == record["messages"][:1] + record["messages"][3:4], "zero-shot: no example turns"
    assert pair["completion"] == record["messages"][4:]
    assert pair["metadata"]["model"] == "chat-teacher" and pair["metadata"]["adapter"] == ""


def test_parquet_holds_the_same_records_as_jsonl(tables, tmp_path):
    for fmt in ("messages", "prompt_completion"):
        as_jsonl, as_parquet = tmp_path / f"{fmt}.jsonl", tmp_path / f"{fmt}.parquet"
        export_training(tables["syn_a"], str(as_jsonl), fmt=fmt)
        export_training(tables["syn_a"], str(as_parquet), fmt=fmt)
        records = _read(as_parquet)
        assert len(records) == 7
        assert records == _read(as_jsonl)
    assert pq.read_schema(tmp_path / "messages.parquet").field("messages").type.value_type.names == ["role", "content"]


def test_exports_are_byte_identical_across_reruns(tables, tmp_path):
    first, second = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    export_training(tables["syn_a"], str(first), batch_rows=2)
    export_training(tables["syn_a"], str(second))
    assert first.read_bytes() == second.read_bytes() and first.stat().st_size > 0
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"


@pytest.mark.parametrize(
    ("table", "kwargs", "error", "match"),
    [
        ("lab_a", {"version": "a2"}, TableError, r"version a2 of .* did not pass its quality gates \(min_valid_rate 0.2 against thr"),
        ("lab_a", {"version": "nope"}, TableError, r"no complete version 'nope'; versions: a1, a2"),
        ("missing", {}, TableError, r"missing is not a table"),
        ("syn_a", {"out": "sft.csv"}, ConfigError, r"--out must end in .jsonl or .parquet.*sft.csv"),
        ("syn_a", {"fmt": "alpaca"}, ConfigError, r"--format must be one of messages, prompt_completion, got 'alpaca'"),
        ("syn_a", {"prompt": "few_shot"}, ConfigError, r"--prompt must be one of zero_shot, task, got 'few_shot'"),
        ("syn_a", {"task": "classify"}, ConfigError, r"--task classify is not the spec version a1 was generated with"),
    ],
)
def test_refusals(tables, tmp_path, table, kwargs, error, match):
    paths = tables | {"missing": str(tmp_path / "missing")}
    out = str(tmp_path / kwargs.pop("out", "sft.jsonl"))
    with pytest.raises(error, match=match):
        export_training(paths[table], out, **kwargs)
    assert not list(tmp_path.glob("sft*")), "a refused export writes nothing"


def test_a_manifest_without_task_spec_needs_task(tables, tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(tables["syn_a"], legacy)
    vdir = layout.version_dir(str(legacy), "a1")
    manifest = layout.read_manifest(vdir)
    del manifest["task_spec"]
    layout.write_manifest(vdir, manifest)
    with pytest.raises(ConfigError, match=r"manifest of version a1 predates task_spec.*pass --task with the task it ran \(synonyms\)"):
        export_training(str(legacy), str(tmp_path / "x.jsonl"))
    export_training(str(legacy), str(tmp_path / "legacy.jsonl"), task="synonyms")
    export_training(tables["syn_a"], str(tmp_path / "current.jsonl"))
    legacy_records = _read(tmp_path / "legacy.jsonl")
    assert legacy_records and legacy_records == _read(tmp_path / "current.jsonl")


def test_manifest_task_spec_rebuilds_the_task(tables):
    for name, task in (("syn_a", "synonyms"), ("lab_a", "classify")):
        manifest = layout.read_manifest(layout.version_dir(tables[name], "a1"))
        assert task_from_dict(manifest["task_spec"]) == load_task(task)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"shots": 9}, r"where: shots must be in \[-1, 3\]"),
        ({"colour": "red"}, r"where: unknown field 'colour'"),
        ({"sampling": {"top_p": 2}}, r"where: sampling.top_p must be in \(0, 1\], got 2.0"),
    ],
)
def test_task_from_dict_validates_like_load_task(change, match):
    spec = json.loads(json.dumps(dataclasses.asdict(load_task("synonyms")))) | change
    with pytest.raises(ConfigError, match=match):
        task_from_dict(spec, "where")


@pytest.mark.parametrize(
    ("separators", "items", "expected"),
    [([",", ";"], ["a", "b"], "a, b"), ([";"], ["a", "b"], "a; b"), ([" | "], ["a", "b"], "a | b"), ([","], [], "")],
)
def test_list_answers_are_joined_like_the_examples(separators, items, expected):
    base = load_task("synonyms")
    task = dataclasses.replace(base, parser=dataclasses.replace(base.parser, separators=tuple(separators)))
    assert answer_text(task, items) == expected


@pytest.mark.parametrize(
    ("example", "query", "lead"),
    [
        ("query: {input}\nanswer: {output}\n\n", "query: {query}\nanswer:", " "),
        ("{input} => {output}\n", "{query} => ", ""),
        ("{input}:{output}\n", "{query}:", ""),
    ],
)
def test_completion_lead_follows_the_example_template(example, query, lead):
    base = load_task("synonyms")
    task = dataclasses.replace(base, template=dataclasses.replace(base.template, example=example, query=query))
    assert completion_lead(task) == lead


def test_prompt_parts_join_to_the_rendered_prompt():
    task = load_task("synonyms")
    header, rest = prompt_parts(task, "covid vaccine")
    assert header + rest == render_prompt(task, "covid vaccine") and header.strip() == task.instruction.strip()
    assert rest.endswith("query: covid vaccine\nsynonyms:")


def test_cli_prints_a_json_summary(tables, tmp_path, capsys):
    out = tmp_path / "sft.parquet"
    assert cli_main(["export-training", "--table", tables["syn_a"], "--out", str(out), "--format", "prompt_completion"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 7 and summary["dropped"] == {"empty_output": 1, "echo": 1} and summary["out"] == str(out)
    assert len(_read(out)) == 7


def test_cli_refuses_a_failed_version_with_exit_2(tables, tmp_path, capsys):
    argv = ["export-training", "--table", tables["lab_a"], "--version", "a2", "--out", str(tmp_path / "x.jsonl")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(r"bulkinfer: error: version a2 .*\(min_valid_rate", err)
