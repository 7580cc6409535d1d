"""OutputParser.parse_column gives, row for row, what OutputParser.parse gives, on messy answers."""

import dataclasses
import random

import pyarrow as pa
import pytest

from bulkinfer.keys import normalize_key
from bulkinfer.tasks.parsing import compile_parser, plain_rows
from bulkinfer.tasks.spec import load_task

WORDS = ["covid vaccine", "Covid  Vaccine", "flu shot", "FLU SHOT", "jab", "cheap flights", "vacuna covid", "東京", "café", "x", ""]
DECOR = ["{}", "- {}", "* {}", "1. {}", "12) {}", '"{}"', "'{}'", "({})", "[{}].", "{}!", "  {}  ", "{} ;", "-{}", "•  {}", "{}\t", "`{}`?"]


def _answers(rng: random.Random, words: list[str], n: int) -> list[str]:
    answers = []
    for _ in range(n):
        pieces = [rng.choice(DECOR).format(rng.choice(words)) for _ in range(rng.randint(0, 9))]
        glue = [rng.choice([",", ", ", ";", "\n", ",\n", "，", "  ,  "]) for _ in pieces]
        answers.append(rng.choice(["", " "]) + "".join(p + g for p, g in zip(pieces, glue, strict=True)))
    return answers


@pytest.mark.parametrize("name", ["synonyms", "synonyms_multilingual", "classify", "classify_cot"])
@pytest.mark.parametrize("max_items", [None, 2])
def test_column_parse_equals_row_parse(name, max_items):
    task = load_task(name)
    if max_items is not None:
        task = dataclasses.replace(task, parser=dataclasses.replace(task.parser, max_items=max_items))
    parser = compile_parser(task)
    rng = random.Random(7)
    examples = [ex.input for ex in task.every_shown_example]
    words = WORDS + examples + [item for ex in task.every_shown_example for item in ex.output.split(",")] + list(task.labels or ())
    raws = _answers(rng, words, 3_000)
    keys = [normalize_key(rng.choice([*WORDS[:-1], *examples])) for _ in raws]
    values, errors = parser.parse_column(raws, keys)
    expected = [parser.parse(raw, key) for raw, key in zip(raws, keys, strict=True)]
    assert values.to_pylist() == [p.value for p in expected]
    assert errors == {i: p.error for i, p in enumerate(expected) if p.error is not None}
    if task.output == "list":
        assert sum(map(bool, values.to_pylist())) > 500, "the answers exercise the parser"
        assert plain_rows(pa.array(raws)).mean() > 0.1, "and its Arrow path"


def test_nothing_to_parse():
    values, errors = compile_parser(load_task("synonyms")).parse_column([], [])
    assert len(values) == 0 and errors == {}
