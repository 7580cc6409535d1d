from pathlib import Path

import pytest

from bulkinfer.errors import ConfigError
from bulkinfer.tasks import builtin_task_names, load_task


def test_builtin_tasks_load():
    names = builtin_task_names()
    assert {"synonyms", "classify"} <= set(names)
    synonyms, classify = load_task("synonyms"), load_task("classify")
    assert synonyms.output == "list" and synonyms.output_column == "synonyms"
    assert classify.output == "label" and classify.output_column == "label"
    assert "drupe" in classify.labels


def test_unknown_task_names_the_builtins():
    with pytest.raises(ConfigError, match=r"unknown task 'synonym'.*synonyms"):
        load_task("synonym")


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "task.yaml"
    path.write_text(text)
    return str(path)


BASE = "name: t\noutput: list\nexamples:\n  - {input: a, output: b}\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name: t\n", r"missing required field 'output'"),
        (BASE + "shot: 1\n", r"unknown field 'shot'"),
        (BASE + "shots: 5\n", r"shots must be in \[-1, 1\].*got 5"),
        (BASE + "sampling: {temperature: 9}\n", r"sampling.temperature must be in \[0, 5\], got 9"),
        (BASE + "sampling: {top_p: 1.5}\n", r"top_p must be in \(0, 1\], got 1.5"),
        (BASE + "sampling: {max_tokens: 0}\n", r"max_tokens must be in \[1, 4096\], got 0"),
        (BASE + "sampling: {max_tokens: '8'}\n", r"sampling.max_tokens must be of type int, got '8'"),
        (BASE + "sampling: {stop: x}\n", r"sampling.stop must be a list of strings"),
        (BASE + "template: {query: 'q:'}\n", r"template.query must contain \{query\}"),
        (BASE + "template: {example: '{input} {nope}'}\n", r"template.example may only use"),
        (BASE + "template: {query: '{query'}\n", r"template.query is not a valid template"),
        ("name: t\noutput: label\nlabels: [a]\n", r"labels must list at least 2 labels"),
        (
            "name: t\noutput: label\nlabels: [a, b]\nexamples:\n  - {input: x, output: c}\n",
            r"output 'c' of example 'x' does not parse.*not one of the labels",
        ),
        ("name: t\noutput: list\nexamples: [{input: x}]\n", r"examples\[0\] must be a mapping with exactly 'input' and 'output'"),
        ("name: t\noutput: table\n", r"output must be 'list' or 'label', got 'table'"),
        ("- a\n- b\n", r"must be a mapping of fields"),
        ("name: [unclosed\n", r"not valid YAML"),
    ],
)
def test_invalid_specs_name_field_rule_and_value(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_task(_write(tmp_path, text))


def test_missing_spec_file(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_task(str(tmp_path / "nope.yaml"))


def test_fingerprint_follows_content(tmp_path):
    one = load_task(_write(tmp_path, BASE))
    same = load_task(_write(tmp_path, BASE))
    changed = load_task(_write(tmp_path, BASE.replace("output: b", "output: c")))
    assert one.fingerprint() == same.fingerprint() != changed.fingerprint()


@pytest.mark.parametrize(("shots", "shown"), [(0, 0), (1, 1), (2, 2), (-1, 3)])
def test_shots_choose_examples(tmp_path, shots, shown):
    text = "name: t\noutput: list\nexamples:\n" + "".join(f"  - {{input: i{n}, output: o{n}}}\n" for n in range(3))
    task = load_task(_write(tmp_path, text + f"shots: {shots}\n"))
    assert len(task.shown_examples) == shown


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("name: t\noutput: list\nformat: voice\n", r"format must be 'completion' or 'chat', got 'voice'"),
        ("name: t\noutput: list\nstructured: {choice: true}\n", r"structured.choice .* needs output: label"),
        (
            "name: t\noutput: list\nstructured: {regex: 'a', json_schema: {type: array}}\n",
            r"one of json_schema, choice, regex; got json_schema, regex",
        ),
        ("name: t\noutput: list\nstructured: {json_schema: [1]}\n", r"structured.json_schema must be a mapping"),
        ("name: t\noutput: list\nstructured: {regex: '(('}\n", r"structured.regex is not a valid regular expression"),
        ("name: t\noutput: list\nparser: {json_field: x}\n", r"parser.json_field reads JSON output: set structured.json_schema"),
        (
            "name: t\noutput: list\nstructured: {json_schema: {type: object}}\nparser: {json_field: s}\n"
            "examples:\n  - {input: a, output: 'b, c'}\n",
            r"output 'b, c' of example 'a' does not parse.*not complete JSON",
        ),
    ],
)
def test_invalid_variant_specs(tmp_path, spec, match):
    path = tmp_path / "t.yaml"
    path.write_text(spec)
    with pytest.raises(ConfigError, match=match):
        load_task(str(path))


def test_adapter_path_is_relative_to_the_spec_and_not_in_the_fingerprint(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for sub in ("a", "b"):
        (tmp_path / sub / "t.yaml").write_text("name: t\noutput: list\nadapter: lora\n")
    a, b = load_task(str(tmp_path / "a" / "t.yaml")), load_task(str(tmp_path / "b" / "t.yaml"))
    assert a.adapter == str(tmp_path / "a" / "lora") and b.adapter == str(tmp_path / "b" / "lora")
    assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("name", ["classify_cot", "synonyms", "classify"])
def test_builtin_tasks_examples_parse(name):
    task = load_task(name)
    assert task.examples
