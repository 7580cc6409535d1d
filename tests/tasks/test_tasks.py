from pathlib import Path

import pytest

from bulkinfer.errors import ConfigError
from bulkinfer.tasks.spec import builtin_task_names, load_task


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


BY_LANGUAGE = """\
name: t
output: list
instruction: Say it otherwise.
examples:
  - {input: fallback one, output: a}
  - {input: fallback two, output: b}
examples_by_language:
  de:
    - {input: laptoptasche, output: notebooktasche}
    - {input: corona impfung, output: covid impfung}
  ja:
    - {input: コロナ ワクチン, output: 新型コロナワクチン}
    - {input: 格安航空券, output: 激安航空券}
instruction_by_language:
  de: Nenne andere Suchanfragen.
"""


def test_examples_and_instruction_are_chosen_by_language(tmp_path):
    from bulkinfer.tasks.prompts import render_prompt

    task = load_task(_write(tmp_path, BY_LANGUAGE + "shots: 1\n"))
    assert task.languages == ("de", "ja")
    assert [ex.input for ex in task.examples_for("de")] == ["laptoptasche"]  # shots applies per language
    assert [ex.input for ex in task.examples_for("ja")] == ["コロナ ワクチン"]
    assert [ex.input for ex in task.examples_for("fr")] == ["fallback one"]  # no examples for fr: the fallback
    assert [ex.input for ex in task.examples_for(None)] == ["fallback one"]
    assert task.instruction_for("de") == "Nenne andere Suchanfragen." and task.instruction_for("ja") == "Say it otherwise."
    german = render_prompt(task, "regenjacke", language="de")
    assert german.startswith("Nenne andere Suchanfragen.") and "laptoptasche" in german and "fallback" not in german
    assert "fallback one" in render_prompt(task, "imperméable", language="fr")
    assert {ex.input for ex in task.every_shown_example} == {"fallback one", "laptoptasche", "コロナ ワクチン"}


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("examples_by_language:\n  pt-BR: [{input: x, output: y}]\n", r"examples_by_language: write 'pt-BR' as 'pt'"),
        ("examples_by_language:\n  xx: [{input: x, output: y}]\n", r"examples_by_language: 'xx' is not a language code"),
        ("examples_by_language:\n  no: [{input: x, output: y}]\n", r"YAML reads an unquoted no/yes/on/off as a boolean"),
        ("examples_by_language:\n  de: []\n", r"examples_by_language.de must be a non-empty list of examples, got \[\]"),
        ("examples_by_language:\n  de: [{input: x}]\n", r"examples_by_language.de\[0\] must be a mapping with exactly 'input'"),
        ("examples_by_language: [de]\n", r"examples_by_language must be a mapping of language code to list"),
        ("examples_by_language:\n  de: [{input: x, output: y}]\nshots: 1\n", r"task.yaml: shots must be in \[-1, 1\]"),
        ("instruction_by_language:\n  de: ''\n", r"instruction_by_language.de must be a non-empty string"),
        ("instruction_by_language:\n  DE: Hallo\n", r"instruction_by_language: write 'DE' as 'de'"),
    ],
)
def test_invalid_language_sections(tmp_path, extra, match):
    two = "name: t\noutput: list\nexamples:\n  - {input: a, output: b}\n  - {input: c, output: d}\n"
    with pytest.raises(ConfigError, match=match):
        load_task(_write(tmp_path, (two + extra).replace("shots: 1\n", "shots: 2\n")))


def test_shots_must_fit_every_language(tmp_path):
    text = BY_LANGUAGE.replace("  ja:\n", "  fr:\n    - {input: x, output: y}\n  ja:\n") + "shots: 2\n"
    with pytest.raises(ConfigError, match=r"shots must be in \[-1, 1\] \(the number of examples_by_language.fr\), got 2"):
        load_task(_write(tmp_path, text))


def test_label_examples_per_language_are_checked(tmp_path):
    text = "name: t\noutput: label\nlabels: [pome, drupe]\nexamples_by_language:\n  de: [{input: apfel, output: Kernobst}]\n"
    with pytest.raises(ConfigError, match=r"output 'Kernobst' of example 'apfel' does not parse.*not one of the labels"):
        load_task(_write(tmp_path, text))


def test_language_sections_change_the_fingerprint_only_when_used(tmp_path):
    plain = load_task(_write(tmp_path, BASE))
    with_languages = load_task(_write(tmp_path, BASE + "examples_by_language:\n  de: [{input: x, output: y}]\n"))
    other_language = load_task(_write(tmp_path, BASE + "examples_by_language:\n  fr: [{input: x, output: y}]\n"))
    assert len({plain.fingerprint(), with_languages.fingerprint(), other_language.fingerprint()}) == 3


def test_multilingual_synonyms_task():
    task = load_task("synonyms_multilingual")
    assert {"en", "de", "es", "fr", "ja", "zh", "ru", "ar", "hi"} <= set(task.languages)
    assert task.output_column == "synonyms" and len(task.examples) == task.shots == 3
    for language in task.languages:
        assert len(task.examples_for(language)) == 3
        assert task.examples_for(language) != task.shown_examples
