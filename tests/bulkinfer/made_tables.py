"""Small real tables with known outputs, made once per test session by the real job and a fake handler.

Synonyms (built-in task, 3 examples), A the teacher and B the student::

    key             A                                        B
    covid vaccine   covid shot, coronavirus vaccine, covid jab   (the same)             exact, jaccard 1
    cheap flights   budget flights, low cost flights         Budget Flights, low cost flights   jaccard 1 (normalised)
    used cars       second hand cars, pre-owned cars         second hand cars, old cars         jaccard 1/3
    red shoes       crimson shoes                            scarlet shoes                      jaccard 0
    blue hat        navy hat, azure hat                      (empty)                            jaccard 0
    only a / only b one side only
    echo one        flu jab, something      (A only: copies an example's item; the parser drops it -> something)
    empty one       (empty)                 (A only)
    self echo       self echo, other        (A only: repeats the query -> echo; the parser dropped it from the list)

Labels (built-in classify task), A then B: lemon hesperidium/hesperidium, lime
hesperidium/berry, apple pome/berry, tomato berry/berry, peach drupe/drupe,
cherry only in B. Label table A also has version ``a2``, whose gate
``min_valid_rate`` failed (4 of 5 answers not labels): kept, never published.

``chat_json``: a ``format: chat`` list task constrained to a JSON schema, read through
``parser.json_field`` (spec in ``CHAT_JSON_SPEC``); ``used cars`` answers an empty list.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkinfer.errors import GateError
from bulkinfer.pipelines.cache_job import run
from tests.conftest import write_corpus
from tests.fakes import FakeHandler

SYNONYMS_A = {
    "covid vaccine": " covid shot, coronavirus vaccine, covid jab",
    "cheap flights": " budget flights, low cost flights",
    "used cars": " second hand cars, pre-owned cars",
    "red shoes": " crimson shoes",
    "blue hat": " navy hat, azure hat",
    "only a": " x only",
    "echo one": " flu jab, something",
    "empty one": " ",
    "self echo": " self echo, other",
}
SYNONYMS_B = {
    "covid vaccine": " covid shot, coronavirus vaccine, covid jab",
    "cheap flights": " Budget Flights, low cost flights",
    "used cars": " second hand cars, old cars",
    "red shoes": " scarlet shoes",
    "blue hat": " ",
    "only b": " b thing",
}
LABELS_A = {"lemon": " hesperidium", "lime": " hesperidium", "apple": " pome", "tomato": " berry", "peach": " drupe"}
LABELS_B = {"lemon": " hesperidium", "lime": " berry", "apple": " berry", "tomato": " berry", "peach": " drupe", "cherry": " drupe"}

CHAT_JSON_SPEC = """\
name: synonyms_json
output: list
format: chat
instruction: List other ways people search for the same thing.
examples:
  - {input: laptop bag, output: '{"synonyms": ["notebook bag", "laptop case"]}'}
structured:
  json_schema: {type: object, properties: {synonyms: {type: array, items: {type: string}}}, required: [synonyms]}
parser:
  json_field: synonyms
"""
CHAT_JSON = {"covid vaccine": '{"synonyms": ["covid shot", "covid jab"]}', "used cars": '{"synonyms": []}'}

_MADE: dict[str, str] = {}


def _job(root: Path, table: str, task: str, answers: dict[str, str], run_id: str, model: str, *extra: str) -> None:
    corpus = write_corpus(root / f"{table}-{run_id}.parquet", list(answers))
    argv = ["--task", task, "--input", str(corpus), "--output", str(root / table), "--model", model, "--run_id", run_id, *extra]
    run(argv, model_handler=FakeHandler(answers=answers))


def made_tables(factory: pytest.TempPathFactory) -> dict[str, str]:
    """Table directories by name (``syn_a``, ``syn_b``, ``lab_a``, ``lab_b``, ``chat_json``), built on the first call."""
    if not _MADE:
        root = factory.mktemp("tables")
        _job(root, "syn_a", "synonyms", SYNONYMS_A, "a1", "teacher")
        _job(root, "syn_b", "synonyms", SYNONYMS_B, "b1", "student")
        _job(root, "lab_a", "classify", LABELS_A, "a1", "teacher")
        _job(root, "lab_b", "classify", LABELS_B, "b1", "student")
        broken = {key: " not a fruit type" for key in LABELS_A} | {"lemon": " hesperidium"}
        with pytest.raises(GateError, match="min_valid_rate"):
            _job(root, "lab_a", "classify", broken, "a2", "teacher", "--full")
        spec = root / "synonyms_json.yaml"
        spec.write_text(CHAT_JSON_SPEC)
        _job(root, "chat_json", str(spec), CHAT_JSON, "c1", "chat-teacher")
        _MADE.update({name: str(root / name) for name in ("syn_a", "syn_b", "lab_a", "lab_b", "chat_json")})
    return dict(_MADE)
