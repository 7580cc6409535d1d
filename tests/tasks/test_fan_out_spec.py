"""target_languages and sampling.n in task specs: validation, fingerprint, rendering, the built-in reference task."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from bulkinfer.errors import ConfigError
from bulkinfer.keys import normalize_key
from bulkinfer.tasks.languages import ISO_639_1, language_name
from bulkinfer.tasks.parsing import parse_output
from bulkinfer.tasks.prompts import render_messages, render_prompt
from bulkinfer.tasks.spec import SamplingSpec, load_task

BASE = """\
name: concepts
output: list
instruction: "List how people search for this in {language_name}."
examples:
  - {input: laptop bag, output: "notebook bag, laptop case"}
"""


def _load(tmp_path: Path, extra: str, base: str = BASE):
    path = tmp_path / "task.yaml"
    path.write_text(textwrap.dedent(base) + textwrap.dedent(extra), encoding="utf-8")
    return load_task(str(path))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("target_languages: de\n", r"target_languages must be a list of ISO 639 language codes, e\.g\. \[en, de, ja\], got 'de'"),
        ("target_languages: [de, klingon]\n", r"target_languages\[1\]: 'klingon' is not a language code; use an ISO 639-1 code"),
        ("target_languages: [de, DE-at]\n", r"target_languages\[1\]: write 'DE-at' as 'de'"),
        ("target_languages: [de, es, de]\n", r"target_languages lists de more than once"),
        ("target_languages: [de, 'no', true]\n", r"target_languages\[2\]: key True is not a language code; .*quote it"),
        ("sampling: {n: 0}\n", r"sampling\.n must be in \[1, 64\], got 0"),
        ("sampling: {n: 65, temperature: 1.0}\n", r"sampling\.n must be in \[1, 64\], got 65"),
        ("sampling: {n: 4}\n", r"sampling\.n = 4 needs sampling\.temperature > 0 \(in \(0, 5\]\), got 0\.0"),
        ("sampling: {n: 1.5}\n", r"sampling\.n must be of type int, got 1\.5"),
    ],
)
def test_bad_fan_out_and_sampling_fields_name_field_value_and_what_is_allowed(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, extra)


def test_a_fallback_prompt_that_does_not_name_the_target_language_is_refused(tmp_path):
    base = BASE.replace("in {language_name}.", "in the query's language.")
    with pytest.raises(ConfigError, match=r"target_languages: es, ja have no instruction_by_language, .*put \{language_name\}"):
        _load(tmp_path, "target_languages: [de, es, ja]\ninstruction_by_language: {de: Auf Deutsch.}\n", base)
    # Every target with its own instruction, or the template naming the language: accepted.
    _load(tmp_path, "target_languages: [de]\ninstruction_by_language: {de: Auf Deutsch.}\n", base)
    _load(tmp_path, "target_languages: [es]\ntemplate: {query: \"query: {query}\\nanswer in {language_name}:\"}\n", base)


def test_several_answers_need_a_plain_list_task(tmp_path):
    with pytest.raises(ConfigError, match=r"sampling\.n = 2 unions the items of several answers: it needs output: list"):
        _load(
            tmp_path,
            "parser: {answer_marker: 'Answer:'}\nsampling: {n: 2, temperature: 0.7}\n",
            BASE.replace("notebook bag, laptop case", "Answer: notebook bag"),
        )


def test_sampling_n_is_in_the_fingerprint_and_the_target_list_is_not(tmp_path):
    plain = _load(tmp_path, "sampling: {temperature: 0.7}\n")
    assert plain.fingerprint() == _load(tmp_path, "sampling: {temperature: 0.7, n: 1}\n").fingerprint()
    assert plain.fingerprint() != _load(tmp_path, "sampling: {temperature: 0.7, n: 3}\n").fingerprint()
    # A pair's prompt depends on its own language only, so the list of targets changes no answer.
    assert _load(tmp_path, "target_languages: [de]\n").fingerprint() == _load(tmp_path, "target_languages: [de, ja]\n").fingerprint()


def test_language_placeholders_render_the_target_in_completion_and_chat_prompts(tmp_path):
    task = _load(tmp_path, 'target_languages: [de]\ntemplate: {query: "query: {query}\\nsearches ({language}):"}\n')
    prompt = render_prompt(task, "covid vaccine", language="pt")
    assert prompt.startswith("List how people search for this in Portuguese.")
    assert prompt.endswith("query: covid vaccine\nsearches (pt):")
    chat = render_messages(dataclasses.replace(task, format="chat"), "covid vaccine", language="el")
    assert chat[0] == {"role": "system", "content": "List how people search for this in Modern Greek."}
    assert chat[1]["content"] == "query: laptop bag\nsearches (el):"
    assert render_prompt(task, "x", language=None).startswith("List how people search for this in the language of the query.")


def test_items_of_n_answers_are_unioned_deduplicated_in_first_seen_order():
    task = load_task("synonyms_worldwide")
    parsed = parse_output(task, "Covid Jab, corona impfung\ncovid jab, vacuna covid\n\nCorona  Impfung", "covid vaccine")
    assert parsed.value == ["Covid Jab", "corona impfung", "vacuna covid"]


def test_the_builtin_reference_task_covers_fifty_languages_each_with_its_own_instruction_and_examples():
    task = load_task("synonyms_worldwide")
    assert len(task.target_languages) >= 50
    assert all(code in ISO_639_1 for code in task.target_languages)
    assert set(task.target_languages) == {code for code, _ in task.instruction_by_language}
    assert set(task.target_languages) == {code for code, _ in task.examples_by_language}
    assert task.sampling.n > 1 and task.sampling.temperature > 0
    # Production gates, not demo ones.
    assert (task.gates.max_echo_rate, task.gates.max_empty_rate, task.gates.max_length_rate) == (0.2, 0.2, 0.05)
    # The examples are about other concepts than the demo's, so a copied example is a leak, never a right answer.
    shown = {normalize_key(ex.input) for ex in task.every_shown_example}
    assert not shown & {"covid vaccine", "cheap flights", "used cars"}
    assert {language_name(code) for code in task.target_languages} >= {"German", "Japanese", "Swahili", "Hindi"}


def test_sampling_spec_defaults_to_one_answer():
    assert SamplingSpec().n == 1
