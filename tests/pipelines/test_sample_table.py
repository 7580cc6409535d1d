"""The job's table on the sample corpus, against the one the row-by-row stages published (stored before the columnar stages)."""

import json
from pathlib import Path

import pyarrow.parquet as pq

from bulkinfer.pipelines.cache_job import run
from tests.fakes import FakeHandler

EXPECTED = Path(__file__).parents[1] / "data" / "sample_table_expected.json"
SAMPLE = Path(__file__).parents[2] / "data" / "sample_queries.parquet"
PREDICTION_COLUMNS = ["key", "query", "language", "synonyms", "raw_output", "source_rows", "finish_reason"]
DEAD_LETTER_COLUMNS = ["reason", "stage", "key", "query", "language", "row", "raw_output", "source_rows"]


def test_the_sample_corpus_gives_the_table_the_row_by_row_stages_gave(tmp_path):
    expected = json.loads(EXPECTED.read_text())
    assert expected["predictions"] and expected["dead_letters"], "the stored table holds both kinds of rows"
    # One answer copies an example and repeats its query, so the leak and echo figures are not zero.
    handler = FakeHandler(answers={"cheap flights": " flu jab, budget flights, cheap flights"})
    argv = ["--task", "synonyms", "--input", str(SAMPLE), "--output", str(tmp_path / "table"), "--model", "fake-model", "--run_id", "r1"]
    manifest = run(argv, model_handler=handler)
    vdir = tmp_path / "table" / "versions" / "r1"
    predictions = pq.read_table(sorted(vdir.glob("predictions-*.parquet"))).select(PREDICTION_COLUMNS).to_pylist()
    dead = pq.read_table(sorted(vdir.glob("dead_letter-*.parquet"))).select(DEAD_LETTER_COLUMNS).to_pylist()
    assert sorted(predictions, key=lambda r: r["key"]) == expected["predictions"]
    assert sorted(dead, key=lambda r: (r["reason"], r["key"] or "", r["row"] or "")) == expected["dead_letters"]
    assert manifest["counts"] == expected["counts"]
    assert manifest["dead_letter_reasons"] == expected["dead_letter_reasons"]
    quality = manifest["quality"]
    assert {name: quality[name] for name in expected["quality"]} == expected["quality"]
    # The counts the manifest keeps beside the rates (stored after the row-by-row stages) agree with them.
    rates = {"empty": "empty_rate", "echoes": "echo_rate", "cut_off": "length_rate", "leak_rows": "example_leak_rate"}
    assert {name: round(quality[name] / quality["keys"], 4) for name in rates} == {name: quality[rate] for name, rate in rates.items()}
    assert quality["echoes"] == 1 and quality["keys"] == 24
