import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline  # noqa: I001
from apache_beam.testing.util import assert_that, equal_to

from bulkinfer.format.records import Provenance, QueryGroup
from bulkinfer.transforms.normalize_keys import NormalizeKeys

PROVENANCE = Provenance(run_id="r", model="m", model_digest="d", task="t", task_fingerprint="f", fingerprint="g", engine="e")


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
        groups, dead = p | beam.Create(rows) | NormalizeKeys("query", ["market"], PROVENANCE)
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
        groups, _ = p | beam.Create([{"query": s} for s in spellings]) | NormalizeKeys("query", [], PROVENANCE)
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
        groups, _ = p | beam.Create(rows) | NormalizeKeys("query", [], PROVENANCE, language_column="lang")
        assert_that(
            groups | beam.Map(lambda g: (g.key, g.language, g.source_rows)),
            equal_to([("gift", "en", 4), ("taxi", "de", 2), ("metro", None, 1)]),
        )
