"""Fan-out into target languages and several answers per prompt, through the cache job with a fake handler."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bulkinfer.errors import GateError
from bulkinfer.format.records import QueryGroup, group_table
from bulkinfer.lookup.table import open_table
from bulkinfer.pipelines.cache_job import run
from bulkinfer.tasks.spec import load_task
from bulkinfer.transforms.build_prompts import prompt_requests
from bulkinfer.transforms.fan_out_languages import fan_out
from tests.conftest import write_corpus
from tests.fakes import FakeHandler

SPEC = """\
name: concepts
output: list
output_column: synonyms
instruction: "List how people search for this in {language_name}."
examples:
  - {input: laptop bag, output: "notebook bag, laptop case"}
instruction_by_language:
  de: "Schreibe auf, wie Menschen auf Deutsch danach suchen."
examples_by_language:
  de:
    - {input: laptop bag, output: "laptoptasche, notebooktasche"}
target_languages: [de, es, ja]
template:
  example: "concept: {input}\\nsearches: {output}\\n\\n"
  query: "concept: {query}\\nsearches ({language}):"
sampling: {temperature: 0.8, n: 2}
"""

# What the fake engine answers per (key, language): a list is the n = 2 answers.
ANSWERS = {
    ("covid vaccine", "de"): ["corona impfung, covid impfung", "corona impfung, impfstoff corona"],
    ("covid vaccine", "es"): ["vacuna covid, vacuna contra el covid", "vacuna covid"],
    ("covid vaccine", "ja"): ["コロナワクチン, 新型コロナワクチン", "コロナ ワクチン"],
    ("cheap flights", "de"): ["billige flüge", "günstige flüge, billige flüge"],
    ("cheap flights", "es"): ["vuelos baratos", "vuelos low cost"],
    ("cheap flights", "ja"): ["格安航空券", "格安 フライト"],
}


def _spec(tmp_path: Path, text: str = SPEC) -> Path:
    path = tmp_path / "task.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _run(tmp_path: Path, run_id: str, handler: FakeHandler, spec: Path | None = None, queries: list | None = None) -> dict:
    corpus = write_corpus(tmp_path / f"corpus-{run_id}.parquet", queries or ["Covid Vaccine", "covid  vaccine", "cheap flights"])
    argv = ["--task", str(spec or _spec(tmp_path)), "--input", str(corpus), "--output", str(tmp_path / "table")]
    return run([*argv, "--model", "fake", "--run_id", run_id], model_handler=handler)


def _rows(tmp_path: Path, run_id: str, kind: str = "predictions") -> list[dict]:
    files = sorted((tmp_path / "table" / "versions" / run_id).glob(f"{kind}-*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_one_prompt_per_key_and_target_language_with_its_instruction_or_the_fallback(tmp_path):
    task = load_task(str(_spec(tmp_path)))
    group = QueryGroup(key="covid vaccine", query="Covid Vaccine", fields=(), source_rows=2, language="en")
    prompts = {r.language: r.prompt for r in prompt_requests(fan_out(group_table([group], ()), task.target_languages), task)}
    assert list(prompts) == ["de", "es", "ja"]
    assert prompts["de"].startswith("Schreibe auf, wie Menschen auf Deutsch danach suchen.")
    assert "searches: laptoptasche, notebooktasche" in prompts["de"] and prompts["de"].endswith("concept: covid vaccine\nsearches (de):")
    # A target without its own instruction gets the fallback, which names the target language.
    assert prompts["es"].startswith("List how people search for this in Spanish.") and prompts["es"].endswith("searches (es):")
    assert prompts["ja"].startswith("List how people search for this in Japanese.")
    assert "searches: notebook bag, laptop case" in prompts["ja"]


def test_the_job_generates_one_row_per_key_and_target_language(tmp_path):
    manifest = _run(tmp_path, "r1", FakeHandler(answer_prompt_lines=True))
    assert sorted((r["key"], r["language"]) for r in _rows(tmp_path, "r1")) == [
        (key, lang) for key in ("cheap flights", "covid vaccine") for lang in ("de", "es", "ja")
    ]
    counts = manifest["counts"]
    assert (counts["keys"], counts["concepts"], counts["target_languages"], counts["generated"]) == (6, 2, 3, 6)
    assert (counts["rows_in"], counts["rows_in_table"], counts["rows_dead"]) == (3, 3, 0)
    assert {row["source_rows"] for row in _rows(tmp_path, "r1") if row["key"] == "covid vaccine"} == {2}


def test_n_answers_and_languages_are_unioned_per_key_each_item_keeping_its_language(tmp_path):
    _run(tmp_path, "r1", FakeHandler(ANSWERS))
    rows = {(r["key"], r["language"]): r for r in _rows(tmp_path, "r1")}
    # The n answers of one prompt: union, deduplicated by the key normaliser, first occurrence first.
    assert rows[("covid vaccine", "de")]["synonyms"] == ["corona impfung", "covid impfung", "impfstoff corona"]
    assert rows[("covid vaccine", "de")]["raw_output"] == "corona impfung, covid impfung\ncorona impfung, impfstoff corona"
    assert rows[("cheap flights", "de")]["synonyms"] == ["billige flüge", "günstige flüge"]
    with open_table(str(tmp_path / "table")) as table:
        answer = table.answer("COVID vaccine")
        assert answer["synonyms"] == [
            "corona impfung", "covid impfung", "impfstoff corona",  # fmt: skip
            "vacuna covid", "vacuna contra el covid",  # fmt: skip
            "コロナワクチン", "新型コロナワクチン", "コロナ ワクチン",  # fmt: skip
        ]
        assert answer["item_languages"] == ["de", "de", "de", "es", "es", "ja", "ja", "ja"]
        row = table.get("covid vaccine")
        assert row["languages"] == ["de", "es", "ja"] and row["language"] is None
        assert json.loads(row["raw_output"])["es"] == "vacuna covid, vacuna contra el covid\nvacuna covid"
        # The match index sees every language's items, each with its language.
        matches = table.match("vacuna contra el covid cerca de mí")["matches"]
        assert [(m["concept"], m["item"], m["language"]) for m in matches] == [("covid vaccine", "vacuna contra el covid", "es")]
        japanese = table.match("格安航空券 東京")["matches"]
        assert [(m["concept"], m["language"]) for m in japanese] == [("cheap flights", "ja")]


def test_an_item_of_several_languages_has_one_language_in_lookups_and_matches(tmp_path):
    # "covid" comes first in the Spanish answer and second in the German one: the union (target
    # order de, es, ja) gives it to de, and the match index, built from the same union, agrees.
    answers = {**ANSWERS, ("covid vaccine", "de"): ["corona impfung, covid"], ("covid vaccine", "es"): ["covid, vacuna covid"]}
    _run(tmp_path, "r1", FakeHandler(answers))
    with open_table(str(tmp_path / "table")) as table:
        answer = table.answer("covid vaccine")
        assert dict(zip(answer["synonyms"], answer["item_languages"], strict=True))["covid"] == "de"
        assert [(m["concept"], m["item"], m["language"]) for m in table.match("covid", exact=True)["matches"]] == [
            ("covid vaccine", "covid", "de")
        ]


def test_rerun_reuses_per_key_and_language_and_a_new_target_generates_only_its_pairs(tmp_path):
    first = _run(tmp_path, "r1", FakeHandler(ANSWERS))
    assert first["counts"]["generated"] == 6
    again = _run(tmp_path, "r2", FakeHandler(ANSWERS))
    assert (again["counts"]["generated"], again["counts"]["reused"]) == (0, 6)
    # Churn compares each row with its own language's row of the published version.
    assert (again["quality"]["churn_compared"], again["quality"]["churn_rate"]) == (6, 0.0)
    more = _run(tmp_path, "r3", FakeHandler(ANSWERS), _spec(tmp_path, SPEC.replace("[de, es, ja]", "[de, es, ja, fr]")))
    # The other pairs' prompts are unchanged: only the new language's pairs are generated.
    assert (more["counts"]["generated"], more["counts"]["reused"]) == (2, 6)
    assert sorted(r["key"] for r in _rows(tmp_path, "r3") if r["run_id"] == "r3") == ["cheap flights", "covid vaccine"]
    assert {r["language"] for r in _rows(tmp_path, "r3") if r["run_id"] == "r3"} == {"fr"}
    # More answers per prompt is another answer: everything is generated again.
    resampled = _run(tmp_path, "r4", FakeHandler(ANSWERS), _spec(tmp_path, SPEC.replace("n: 2", "n: 3")))
    assert resampled["counts"]["generated"] == 6 and resampled["task_fingerprint"] != first["task_fingerprint"]


def test_dead_letters_and_accounting_are_per_key_and_language(tmp_path):
    handler = FakeHandler(ANSWERS, failing=[("covid vaccine", "es")], too_long=[("cheap flights", "ja")])
    with pytest.raises(GateError):  # 2 of 6 prompts lost: over max_failed_rate, the version is kept unpublished
        _run(tmp_path, "r1", handler, queries=["covid vaccine", "cheap flights", None])
    manifest = json.loads((tmp_path / "table" / "versions" / "r1" / "manifest.json").read_text())
    dead = sorted((d["reason"], d["key"], d["language"]) for d in _rows(tmp_path, "r1", "dead_letter") if d["key"])
    assert dead == [("generation_failed", "covid vaccine", "es"), ("prompt_too_long", "cheap flights", "ja")]
    assert [d["reason"] for d in _rows(tmp_path, "r1", "dead_letter") if not d["key"]] == ["null_query"]
    counts = manifest["counts"]
    assert (counts["keys"], counts["concepts"], counts["rows_in_table"], counts["rows_dead"]) == (4, 2, 2, 1)
    assert manifest["dead_letter_reasons"] == {"generation_failed": 1, "null_query": 1, "prompt_too_long": 1}
    # The failed pair is generated again on a rerun; the deterministic dead letter (too long) is kept.
    rerun = FakeHandler(ANSWERS, too_long=[("cheap flights", "ja")])
    with pytest.raises(GateError):
        _run(tmp_path, "r2", rerun, queries=["covid vaccine", "cheap flights", None])
    assert json.loads((tmp_path / "table" / "versions" / "r2" / "manifest.json").read_text())["counts"]["generated"] == 1


def test_a_key_dead_in_every_target_language_counts_its_rows_dead_once(tmp_path):
    handler = FakeHandler(ANSWERS, failing=[("covid vaccine", lang) for lang in ("de", "es", "ja")])
    with pytest.raises(GateError):
        _run(tmp_path, "r1", handler)
    counts = json.loads((tmp_path / "table" / "versions" / "r1" / "manifest.json").read_text())["counts"]
    assert (counts["rows_in"], counts["rows_in_table"], counts["rows_dead"], counts["keys"]) == (3, 1, 2, 3)


def test_redis_export_serves_the_union_of_a_key_and_matches_per_language(tmp_path, redis_url):
    from bulkinfer.lookup.redis_export import RedisExportConfig, RedisTable, export_version

    _run(tmp_path, "r1", FakeHandler(ANSWERS))
    export_version(str(tmp_path / "table"), RedisExportConfig(redis_url, "fanout"))
    reader = RedisTable(redis_url, "fanout")
    found = reader.get("Cheap Flights")
    assert found is not None
    assert found["synonyms"] == ["billige flüge", "günstige flüge", "vuelos baratos", "vuelos low cost", "格安航空券", "格安 フライト"]
    assert found["item_languages"] == ["de", "de", "es", "es", "ja", "ja"]
    matches = reader.match("vuelos baratos")["matches"]
    assert [(m["concept"], m["language"]) for m in matches] == [("cheap flights", "es")]


def test_target_languages_flag_replaces_the_list_and_names_what_is_wrong():
    from bulkinfer.errors import ConfigError
    from bulkinfer.pipelines.plan import with_target_languages

    assert with_target_languages(load_task("synonyms_worldwide"), " de, ja ").target_languages == ("de", "ja")
    with pytest.raises(ConfigError, match=r"--target_languages: 'klingon' is not a language code"):
        with_target_languages(load_task("synonyms_worldwide"), "de,klingon")
    with pytest.raises(ConfigError, match=r"--target_languages must list language codes separated by commas"):
        with_target_languages(load_task("synonyms_worldwide"), " , ")
    # The plain synonyms task cannot ask for a target language: its instruction names none.
    with pytest.raises(ConfigError, match=r"--target_languages de: task synonyms: target_languages: de have no instruction_by_language"):
        with_target_languages(load_task("synonyms"), "de")
