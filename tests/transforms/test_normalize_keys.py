import pickle

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline  # noqa: I001
from apache_beam.testing.util import assert_that, equal_to

from bulkinfer.format.records import Provenance, QueryGroup, query_groups
from bulkinfer.transforms.key_tables import KEY_BUCKETS, KeyTable
from bulkinfer.transforms.normalize_keys import KeyRow, NormalizeKeys, PickRepresentative, to_query_group

PROVENANCE = Provenance(run_id="r", model="m", model_digest="d", task="t", task_fingerprint="f", fingerprint="g", engine="e")


def _rows(groups, dead):
    """The stage's tables as QueryGroups and dead-letter rows, to compare with the row-by-row rules."""
    return groups | "Groups" >> beam.FlatMap(query_groups), dead | "DeadRows" >> beam.FlatMap(lambda t: t.to_pylist())


def test_spellings_merge_into_one_group_and_bad_rows_dead_letter():
    rows = [
        {"query": "  Covid   VACCINE ", "market": "us"},
        {"query": "covid vaccine", "market": "us"},
        {"query": "ＣＯＶＩＤ ｖａｃｃｉｎｅ", "market": "us"},
        {"query": "Cheap Flights", "market": "de"},
        {"query": None, "market": "us"},
        {"query": "   ", "market": "us"},
        {"query": "x", "market": None},
    ]
    with TestPipeline() as p:
        groups, dead = p | beam.Create([pa.Table.from_pylist(rows)]) | NormalizeKeys("query", ["market"], PROVENANCE)
        groups, dead = _rows(groups, dead)
        assert_that(
            groups,
            equal_to(
                [
                    QueryGroup(key="covid vaccine", query="covid vaccine", fields=(("market", "us"),), source_rows=3),
                    QueryGroup(key="cheap flights", query="Cheap Flights", fields=(("market", "de"),), source_rows=1),
                ]
            ),
            label="groups",
        )
        assert_that(
            dead | beam.Map(lambda d: (d["reason"], d["source_rows"], d["run_id"])),
            equal_to([("null_query", 1, "r"), ("empty_query", 1, "r"), ("missing_template_field", 1, "r")]),
            label="dead",
        )


def test_thousand_spellings_are_one_group():
    spellings = [" " * (i % 7) + "".join(c.upper() if (i >> n) & 1 else c for n, c in enumerate("covid vaccine")) for i in range(1000)]
    with TestPipeline() as p:
        groups, _ = _rows(*(p | beam.Create([pa.table({"query": spellings})]) | NormalizeKeys("query", [], PROVENANCE)))
        assert_that(groups | beam.Map(lambda g: (g.key, g.source_rows)), equal_to([("covid vaccine", 1000)]))


def test_key_language_is_the_majority_of_its_rows_language_column():
    rows = [
        {"query": "Gift", "lang": "en-GB"},
        {"query": "gift", "lang": "EN"},
        {"query": "GIFT", "lang": "de"},
        {"query": "gift ", "lang": None},  # no vote
        {"query": "taxi", "lang": "fr"},
        {"query": "Taxi", "lang": "de"},  # a tie: the smaller code
        {"query": "metro", "lang": "klingon"},  # unrecognised: no vote, so unknown
    ]
    with TestPipeline() as p:
        groups, _ = _rows(*(p | beam.Create([pa.Table.from_pylist(rows)]) | NormalizeKeys("query", [], PROVENANCE, language_column="lang")))
        assert_that(
            groups | beam.Map(lambda g: (g.key, g.language, g.source_rows)),
            equal_to([("gift", "en", 4), ("taxi", "de", 2), ("metro", None, 1)]),
        )


def _row_by_row(rows, fields, language_column):
    """The per-row rules (KeyRow, PickRepresentative), as ``--dry_run`` applies them: the reference for the columnar stage."""
    keyer, combine = KeyRow("query", fields, PROVENANCE, language_column), PickRepresentative()
    accumulators, dead = {}, []
    for row in rows:
        for out in keyer.process(row):
            if isinstance(out, tuple):
                key, value = out
                accumulators[key] = combine.add_input(accumulators.get(key) or combine.create_accumulator(), value)
            else:
                dead.append(out.value)
    return [to_query_group((key, combine.extract_output(acc))) for key, acc in accumulators.items()], dead


def _messy_corpus(n):
    spellings = ["Covid Vaccine", "covid vaccine", " covid  vaccine", "COVID VACCINE", "ＣＯＶＩＤ ｖａｃｃｉｎｅ"]
    spellings += ["cheap flights", "Cheap  Flights"]
    languages = ["en", "EN-gb", "de", None, "klingon", "und", "", "pt_BR", "fr"]
    rows = []
    for i in range(n):
        query = None if i % 97 == 0 else "   " if i % 89 == 0 else f"{spellings[i % len(spellings)]} {'' if i % 3 else i % 50}".rstrip()
        market = None if i % 83 == 0 else ["us", "de", "fr"][i % 3]
        rows.append({"query": query, "market": market, "lang": languages[(i * 7) % len(languages)]})
    return rows


@pytest.mark.parametrize(("fields", "language_column"), [((), None), (("market",), "lang")])
def test_tables_give_the_groups_and_dead_letters_of_the_row_by_row_rules(fields, language_column):
    rows = _messy_corpus(3000)
    expected_groups, expected_dead = _row_by_row(rows, fields, language_column)
    assert len(expected_groups) > 50 and expected_dead, "the corpus exercises merging and dead letters"
    tables = [pa.Table.from_pylist(rows[i : i + 700]) for i in range(0, len(rows), 700)]  # keys spread over several tables
    with TestPipeline() as p:
        groups, dead = _rows(*(p | beam.Create(tables) | NormalizeKeys("query", list(fields), PROVENANCE, language_column)))
        assert_that(groups, equal_to(expected_groups), label="groups")
        assert_that(dead, equal_to(expected_dead), label="dead")


def test_a_bytes_query_column_is_keyed_row_by_row():
    rows = [{"query": b"Cheap Flights"}, {"query": b"cheap flights"}, {"query": b"\xff\xfe"}, {"query": None}]
    expected_groups, expected_dead = _row_by_row(rows, (), None)
    with TestPipeline() as p:
        groups, dead = _rows(*(p | beam.Create([pa.Table.from_pylist(rows)]) | NormalizeKeys("query", [], PROVENANCE)))
        assert_that(groups, equal_to(expected_groups), label="groups")
        assert_that(dead | beam.Map(lambda d: d["reason"]), equal_to([d["reason"] for d in expected_dead]), label="dead")


def test_bucket_tables_carry_only_their_own_rows_when_pickled():
    """Beam pickles each (bucket, table) for the shuffle: a slice would carry its parent table's whole buffers."""
    table = pa.table({"query": [f"query number {i}" for i in range(20_000)]})
    outputs = list(KeyTable("query", [], PROVENANCE).process(table))
    assert len(outputs) == KEY_BUCKETS
    assert sum(t.num_rows for _, t in outputs) == table.num_rows
    shipped = sum(len(pickle.dumps(t)) for _, t in outputs)
    assert shipped < 3 * len(pickle.dumps(table)), f"{shipped:,} bytes pickled for a {len(pickle.dumps(table)):,}-byte table"
