"""union_languages by column gives what the row-by-row merge it replaced gave, on messy fanned-out rows."""

import random

import pyarrow as pa
import pytest

from bulkinfer.format.records import prediction_schema
from bulkinfer.lookup.union import _union_by_row, union_languages
from bulkinfer.tasks.spec import load_task

TASK = load_task("synonyms_worldwide")
ORDER = ("de", "es", "ja", "en")
SPELLINGS = ["Covid Jab", "covid  jab", "COVID JAB", "vacuna", "Vacuna ", "新冠疫苗", "straße", "STRASSE", "", " ", "jab", "ｊａｂ", "x\ty"]
RAWS = [' "quoted", text', "line\nbreak", "tab\there", "plain answer", "ünïcödé", "back\\slash", "\x07bell", "", None]


def messy_rows(seed: int, keys: int) -> pa.Table:
    """Keys with one to five language rows: repeated, missing (null or empty) and untargeted languages,
    items that meet under the key normaliser across languages, null and empty answers, null counts."""
    rng = random.Random(seed)
    rows = []
    for k in range(keys):
        for _ in range(rng.randint(1, 5)):
            rows.append(
                {
                    "key": f"key {k % 7} {k}",
                    "query": f"Key {k}",
                    "language": rng.choice([*ORDER, "fr", "pt", None, ""]),
                    "synonyms": rng.choice([None, [], *([rng.sample(SPELLINGS, rng.randint(1, 5))] * 4)]),
                    "raw_output": rng.choice(RAWS),
                    "source_rows": rng.randint(1, 3),
                    "prompt_tokens": rng.choice([None, 10, 20]),
                    "output_tokens": rng.choice([None, 3, 7]),
                    "finish_reason": rng.choice(["stop", "length", None]),
                    "model": "m",
                    "run_id": rng.choice(["r1", "r2", "r10", None]),
                }
            )
    rng.shuffle(rows)
    return pa.Table.from_pylist(rows, schema=prediction_schema(TASK))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("order", [ORDER, ()])
def test_union_by_column_equals_the_row_by_row_merge(seed, order):
    rows = messy_rows(seed, keys=60)
    got, expected = union_languages(rows, "synonyms", order), _union_by_row(rows, "synonyms", order)
    assert got.schema == expected.schema
    assert got.num_rows == expected.num_rows > 0
    assert got.to_pylist() == expected.to_pylist()


def test_union_of_chunked_rows_and_of_no_rows():
    rows = messy_rows(7, keys=40)
    chunked = pa.concat_tables([rows.slice(0, 50), rows.slice(50)])
    assert union_languages(chunked, "synonyms", ORDER).to_pylist() == _union_by_row(rows, "synonyms", ORDER).to_pylist()
    empty = rows.slice(0, 0)
    assert union_languages(empty, "synonyms", ORDER).schema == _union_by_row(empty, "synonyms", ORDER).schema
    assert union_languages(empty, "synonyms", ORDER).num_rows == 0
