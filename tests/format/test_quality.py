import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkinfer.format.quality import example_keys, example_leaks, failed_gates, is_echo, measure
from bulkinfer.tasks.parsing import parse_output
from bulkinfer.tasks.spec import GateSpec, load_task

SYNONYMS = load_task("synonyms")
CLASSIFY = load_task("classify")
EXAMPLES = example_keys(SYNONYMS)


def _rows(items: dict[str, tuple[list[str], str]]) -> pa.Table:
    return pa.table(
        {
            "key": list(items),
            "synonyms": [value for value, _ in items.values()],
            "raw_output": [raw for _, raw in items.values()],
        }
    )


def test_example_keys_hold_inputs_and_output_items():
    assert {"laptop bag", "notebook bag", "flu jab", "car insurance"} <= EXAMPLES


@pytest.mark.parametrize(
    ("raw", "key", "echo"),
    [
        (" coronavirus vaccine, covid jab", "covid vaccine", False),
        (" covid vaccine, covid jab", "covid vaccine", True),  # repeats the query
        # Copies of another query's example are dropped by the parser (example_leaks): echo sees what is left.
        (" flu jab, influenza shot", "covid vaccine", False),
        (" Laptop Bag", "backpack", False),
        (" flu jab, covid vaccine", "covid vaccine", True),  # what is left repeats the query
        (" flu jab, influenza vaccine", "flu shot", True),  # an example's own query answered with its example answer
        ("", "covid vaccine", False),
    ],
)
def test_list_echo(raw, key, echo):
    assert is_echo(SYNONYMS, raw, key, EXAMPLES) is echo


def test_label_echo_is_repeating_the_query():
    assert is_echo(CLASSIFY, " lemon", "lemon", example_keys(CLASSIFY))
    assert not is_echo(CLASSIFY, " hesperidium", "lemon", example_keys(CLASSIFY))


def test_measure_rates_and_churn():
    rows = _rows({"a": (["x"], " x"), "b": ([], " b"), "c": ([], " flu jab, car cover"), "d": (["y"], " y")})
    rows = rows.append_column("finish_reason", pa.array(["stop", "stop", "stop", "length"]))
    previous = pa.table({"key": ["a", "c", "gone"], "synonyms": [["x"], ["other"], ["z"]]})
    quality = measure(SYNONYMS, rows, {"unparseable_output": 1}, previous)
    assert quality == {
        "keys": 4,
        "valid_rate": 0.8,
        "failed_rate": 0.2,
        "empty_rate": 0.5,
        "echo_rate": 0.25,  # "b" repeats its query; "c" copied two examples' items, dropped and counted as leaks
        "length_rate": 0.25,
        "example_leak_rate": 0.25,
        "example_leaks": 2,
        "churn_rate": 0.5,
        "churn_compared": 2,
        # The counts behind the rates, kept in the manifest for a rerun with the same answers.
        "empty": 2,
        "echoes": 1,
        "cut_off": 1,
        "leak_rows": 1,
    }


def test_measure_without_rows_or_previous():
    assert measure(SYNONYMS, None, {}, None)["valid_rate"] is None
    assert measure(SYNONYMS, _rows({"a": (["x"], " x")}), {}, None)["churn_rate"] is None


def test_the_length_gate_counts_answers_cut_off_at_max_tokens():
    task = dataclasses.replace(SYNONYMS, gates=GateSpec(max_length_rate=0.05))
    rows = _rows({"a": (["x"], " x"), "b": (["y"], " y, z, w")}).append_column("finish_reason", pa.array(["stop", "length"]))
    quality = measure(task, rows, {}, None)
    assert quality["length_rate"] == 0.5
    assert failed_gates(task, quality) == [{"gate": "max_length_rate", "threshold": 0.05, "value": 0.5}]


def test_failed_gates_name_threshold_and_value():
    task = dataclasses.replace(SYNONYMS, gates=GateSpec(min_valid_rate=0.9, max_echo_rate=0.3))
    failed = failed_gates(task, {"valid_rate": 0.8, "empty_rate": 0.0, "echo_rate": 0.5, "churn_rate": None})
    assert failed == [
        {"gate": "min_valid_rate", "threshold": 0.9, "value": 0.8},
        {"gate": "max_echo_rate", "threshold": 0.3, "value": 0.5},
    ]


GEMMA = Path(__file__).parents[1] / "data" / "gemma3_270m_synonyms.json"


def test_the_leak_filter_on_the_real_base_model_copying_examples():
    """Raw answers Gemma 3 270M (base) gave to the synonyms task on the sample corpus (`make run`).

    Before the leak filter the published lists were never empty and 79% of rows copied
    an example; after it, the copies are dropped and counted, the empty rate shows
    what is left, and the task's own gates refuse the version.
    """
    recorded = json.loads(GEMMA.read_text())
    assert recorded["rows"], "no recorded outputs"
    keys = [r["key"] for r in recorded["rows"]]
    raws = [r["raw_output"] for r in recorded["rows"]]
    assert not any(not r["synonyms"] for r in recorded["rows"]), "as recorded (parser version 1): no empty list"
    reparsed = [parse_output(SYNONYMS, raw, key).value for key, raw in zip(keys, raws, strict=True)]
    assert ["car insurance", "motor insurance", "car cover"][0] not in reparsed[keys.index("cheap flights")]
    assert reparsed[keys.index("cheap flights")] == [] and reparsed[keys.index("phone charger")] == [
        "auto charger",
        "vehicle charger",
        "motor charger",
    ]
    quality = measure(SYNONYMS, pa.table({"key": keys, "synonyms": reparsed, "raw_output": raws}), {}, None)
    assert quality["example_leaks"] == 47 and round(quality["example_leak_rate"], 3) == 0.708
    assert round(quality["empty_rate"], 3) == 0.417 and quality["echo_rate"] == 0.375
    assert {gate["gate"] for gate in failed_gates(SYNONYMS, quality)} == {"max_empty_rate", "max_echo_rate"}, "the built-in gates refuse it"


def test_failed_rate_counts_every_key_the_job_should_have_answered():
    rows = _rows({f"k{i}": (["x"], " x") for i in range(17)})
    dead = {"generation_failed": 1, "prompt_too_long": 1, "unparseable_output": 1, "null_query": 50, "empty_query": 9}
    quality = measure(SYNONYMS, rows, dead, None)
    assert quality["failed_rate"] == 3 / 20  # input mistakes (null, empty) are not failures of the job
    assert failed_gates(SYNONYMS, quality)[0]["gate"] == "max_failed_rate"
    clean = measure(SYNONYMS, rows, {"generation_failed": 0}, None)
    assert clean["failed_rate"] == 0.0 and failed_gates(SYNONYMS, clean) == []


def test_a_version_without_keys_fails_even_without_measures():
    quality = measure(SYNONYMS, None, {"null_query": 3}, None)
    assert quality["keys"] == 0 and quality["failed_rate"] is None
    assert failed_gates(SYNONYMS, quality) == [{"gate": "min_keys", "threshold": 1, "value": 0}]


def test_failure_rate_gate_is_on_by_default_and_checked():
    assert GateSpec().max_failed_rate == 0.05
    with pytest.raises(Exception, match=r"gates.max_failed_rate must be in \[0, 1\], got 1.5"):
        GateSpec(max_failed_rate=1.5)


def _per_row_reference(task, keys, raws):
    """The echo and leak figures row by row, with the parser's own functions (what ``measure`` computes by column)."""
    examples = example_keys(task)
    leaks = [example_leaks(task, raw, key) for key, raw in zip(keys, raws, strict=True)]
    echoes = sum(is_echo(task, raw, key, examples) for key, raw in zip(keys, raws, strict=True))
    return {"echo": echoes, "leak_rows": sum(1 for count in leaks if count), "leaks": sum(leaks)}


@pytest.mark.parametrize("max_items", [1, 2, 32])
def test_measure_by_column_agrees_with_the_per_row_measures(max_items):
    """Recorded Gemma answers, each also given to other keys (example inputs among them), and a few made-up ones."""
    task = dataclasses.replace(SYNONYMS, parser=dataclasses.replace(SYNONYMS.parser, max_items=max_items))
    recorded = json.loads(GEMMA.read_text())["rows"]
    assert recorded, "no recorded outputs"
    raws = [r["raw_output"] for r in recorded] + [" flu jab, influenza vaccine", " covid vaccine, flu jab, covid jab", "", " -"]
    other_keys = ["flu shot", "covid vaccine", "laptop bag", "influenza vaccine", "cheap flights", "something else"]
    pairs = [(r["key"], r["raw_output"]) for r in recorded]
    pairs += [(key, raw) for i, raw in enumerate(raws) for key in (other_keys[i % len(other_keys)], f"fresh key {i}")]
    # A key that is an example's answer item (its own repeat is no leak), and a repeat behind the item limit.
    pairs += [("flu jab", " flu jab, influenza shot, other"), ("gamma", " alpha, beta, gamma"), ("beta", " alpha, beta, gamma")]
    pairs = list(dict(pairs).items())  # one row per key, as in a version
    keys, raw_outputs = [k for k, _ in pairs], [r for _, r in pairs]
    values = [parse_output(task, raw, key).value for key, raw in pairs]
    quality = measure(task, pa.table({"key": keys, "synonyms": values, "raw_output": raw_outputs}), {}, None)
    expected = _per_row_reference(task, keys, raw_outputs)
    assert expected["echo"] and expected["leaks"], "the data exercises both measures"
    assert quality["echo_rate"] == expected["echo"] / len(keys)
    assert quality["example_leak_rate"] == expected["leak_rows"] / len(keys)
    assert quality["example_leaks"] == expected["leaks"]


def test_label_echo_by_column_and_churn_of_labels():
    rows = pa.table({"key": ["lemon", "apple", "kiwi"], "label": ["fruit", None, ""], "raw_output": [" Lemon.", " fruit", None]})
    task = dataclasses.replace(CLASSIFY, output_column="label")
    previous = pa.table({"key": ["lemon", "apple", "kiwi"], "label": ["fruit", None, "fruit"]})
    quality = measure(task, rows, {}, previous)
    assert (quality["echo_rate"], quality["empty_rate"]) == (1 / 3, 2 / 3)
    assert (quality["churn_rate"], quality["churn_compared"]) == (1 / 3, 3)  # null to null is no change; "" from "fruit" is


_PIECES = [
    " covid jab",
    "Covid  JAB",
    "- flu jab",
    "* bullet",
    "1. numbered",
    "12) twelve",
    "1234. not a list number",
    '"quoted"',
    "'single'",
    "(brackets)",
    "[x]",
    "trailing!?",
    "ends.;",
    " ",
    "",
    "\tTab",
    "a\rb",
    "ctl\x07x",
    "vacuna  contra",
    "ｆｕｌｌ",
    "“curly”",
    "• dot",
    "·mid",
    "--",
    "1.",
    "straße",
    "x\x1fy",
    "laptop bag",
    "notebook bag",
    "flu shot",
    "upper CASE",
]
_SEPARATORS = [", ", ",", ";", "\n", "، ", "，", " , "]


@given(st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from(_SEPARATORS)), max_size=8), st.sampled_from(["", " ", "\n"]))
@settings(max_examples=150, deadline=None)
def test_the_arrow_parse_of_answers_equals_the_parsers(pieces, lead):
    """Messy answers (bullets, quotes, repeats, control characters, Unicode, every separator) parse to the same
    candidate items in Arrow as with the parser's own clean_items, each answer on its own."""
    from bulkinfer.format.quality import _candidate_items, _candidate_table
    from bulkinfer.tasks.parsing import compile_parser

    task = load_task("synonyms_multilingual")
    parser = compile_parser(task)
    raws = [lead + "".join(piece + sep for piece, sep in pieces[:cut]) for cut in range(len(pieces) + 1)]
    found = _candidate_table(parser, pa.array(raws, pa.string())).to_pylist()
    assert [(row["raw"], row["item"]) for row in found] == [
        (i, item) for i, raw in enumerate(raws) for item in _candidate_items(parser, raw)
    ]


def test_measure_on_messy_answers_agrees_with_the_per_row_measures():
    raws = [
        " covid jab, Covid  JAB, - flu jab; 1. laptop bag\n* notebook bag",
        " flu shot, FLU SHOT, (covid jab), “curly”, ctl\x07x",
        "\tflu jab, influenza shot.,,",
        " vacuna contra el covid， 新冠疫苗、 laptop bag",
    ]
    keys = ["covid jab", "flu shot", "flu jab", "covid vaccine", "fresh", "another"]
    pairs = [(key, raws[i % len(raws)]) for i, key in enumerate(keys)]
    values = [parse_output(SYNONYMS, raw, key).value for key, raw in pairs]
    quality = measure(SYNONYMS, pa.table({"key": keys, "synonyms": values, "raw_output": [raw for _, raw in pairs]}), {}, None)
    expected = _per_row_reference(SYNONYMS, keys, [raw for _, raw in pairs])
    assert expected["echo"] and expected["leaks"], "the data exercises both measures"
    assert quality["echo_rate"] == expected["echo"] / len(keys)
    assert quality["example_leak_rate"] == expected["leak_rows"] / len(keys)
    assert quality["example_leaks"] == expected["leaks"]
