"""bulkinfer.tools.compare and `bulkinfer compare` on small real tables whose figures are known by hand."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkinfer.cli import main as cli_main
from bulkinfer.errors import ConfigError, TableError
from bulkinfer.keys import normalize_key
from bulkinfer.tools.compare import _normalised_items, compare_tables, render_summary
from tests.bulkinfer.made_tables import made_tables


@pytest.fixture(scope="session")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return made_tables(tmp_path_factory)


def test_list_tables_agreement_jaccard_coverage_and_stats(tables):
    c = compare_tables(tables["syn_a"], tables["syn_b"])
    assert (c.output_kind, c.output_column) == ("list", "synonyms")
    assert (c.shared, c.only_a, c.only_b) == (5, 4, 1)
    assert (c.exact, c.exact_rate, c.disagreements) == (1, 0.2, 4)
    # Jaccard per shared key: covid 1 (identical), cheap flights 1 (differs only in case), used cars 1/3, red shoes 0, blue hat 0
    assert c.jaccard_mean == round((1 + 1 + 1 / 3) / 5, 4)
    assert c.jaccard_median == round(1 / 3, 4)
    assert c.jaccard_at_least_half == 0.4 and c.same_set_rate == 0.4
    assert c.accuracy is None and c.confusion == []
    assert (c.stats_a.mean_items, c.stats_b.mean_items) == (2.0, 1.6)
    assert (c.stats_a.empty_rate, c.stats_b.empty_rate) == (0.0, 0.2)
    assert (c.stats_a.mean_output_tokens, c.stats_b.mean_output_tokens) == (3.0, 3.0)
    assert (c.a.model, c.a.version, c.a.published, c.a.gates_passed, c.a.keys) == ("teacher", "a1", True, True, 9)
    assert (c.b.model, c.b.version, c.b.task) == ("student", "b1", "synonyms")
    assert c.a.task_fingerprint == c.b.task_fingerprint


def test_sample_of_disagreements_is_deterministic_and_complete(tables):
    c = compare_tables(tables["syn_a"], tables["syn_b"], sample=20)
    by_key = {d.key: d for d in c.sample}
    assert sorted(by_key) == ["blue hat", "cheap flights", "red shoes", "used cars"]
    assert by_key["used cars"].a == ["second hand cars", "pre-owned cars"] and by_key["used cars"].b == ["second hand cars", "old cars"]
    assert by_key["used cars"].jaccard == round(1 / 3, 4) and by_key["blue hat"].b == []
    again = compare_tables(tables["syn_a"], tables["syn_b"], sample=2)
    assert again.sample == c.sample[:2], "a smaller sample must be the start of the same hash order"
    assert compare_tables(tables["syn_a"], tables["syn_b"], sample=0).sample == ()


def test_label_tables_accuracy_confusion_and_distribution(tables):
    c = compare_tables(tables["lab_a"], tables["lab_b"])
    assert (c.output_kind, c.output_column) == ("label", "label")
    assert (c.shared, c.only_a, c.only_b, c.exact) == (5, 0, 1, 3)
    assert c.accuracy == 0.6 and c.jaccard_mean is None and c.stats_a.mean_items is None
    assert c.confusion == [
        ("berry", "berry", 1),
        ("drupe", "drupe", 1),
        ("hesperidium", "berry", 1),
        ("hesperidium", "hesperidium", 1),
        ("pome", "berry", 1),
    ]
    assert c.stats_a.labels == {"hesperidium": 2, "berry": 1, "drupe": 1, "pome": 1}
    assert c.stats_b.labels == {"berry": 3, "drupe": 1, "hesperidium": 1}
    assert {(d.key, d.a, d.b) for d in c.sample} == {("lime", "hesperidium", "berry"), ("apple", "pome", "berry")}
    summary = render_summary(c)
    assert "accuracy of B against A): 60.0%" in summary and "hesperidium -> berry 1" in summary


def test_a_table_against_itself_agrees_everywhere(tables):
    c = compare_tables(tables["syn_a"], tables["syn_a"])
    assert (c.shared, c.exact, c.disagreements, c.sample) == (9, 9, 0, ())
    assert c.jaccard_mean == c.jaccard_median == c.same_set_rate == 1.0


def test_an_unpublished_version_whose_gates_failed_can_be_compared(tables):
    c = compare_tables(tables["lab_a"], tables["lab_a"], version_b="a2")
    assert (c.b.version, c.b.published, c.b.gates_passed) == ("a2", False, False)
    assert (c.shared, c.exact) == (1, 1), "only lemon parsed in a2"
    assert "gates FAILED, not published" in render_summary(c)


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "error", "match"),
    [
        ("syn_a", "lab_a", {}, TableError, r"cannot compare .*\(list column 'synonyms'.*\(label column 'label'.*different kinds"),
        ("syn_a", "missing", {}, TableError, r"missing is not a table: no such directory"),
        ("syn_a", "syn_b", {"version_b": "nope"}, TableError, r"no complete version 'nope'; versions: b1"),
        ("syn_a", "syn_b", {"version_a": "../x"}, TableError, r"'../x' is not a version name"),
        ("syn_a", "syn_b", {"sample": -1}, ConfigError, r"--sample must be >= 0, got -1"),
    ],
)
def test_refusals(tables, tmp_path, a, b, kwargs, error, match):
    paths = tables | {"missing": str(tmp_path / "missing")}
    with pytest.raises(error, match=match):
        compare_tables(paths[a], paths[b], **kwargs)


def test_no_shared_keys_is_a_result_not_an_error(tables, tmp_path):
    disjoint = tmp_path / "syn_b"
    shutil.copytree(tables["syn_b"], disjoint)
    shards = list(disjoint.glob("versions/b1/predictions-*.parquet"))
    assert shards
    for shard in shards:
        rows = pq.read_table(shard)
        keys = pa.array(["other " + key for key in rows.column("key").to_pylist()], pa.string())
        pq.write_table(rows.set_column(rows.schema.get_field_index("key"), rows.schema.field("key"), keys), shard)
    c = compare_tables(tables["syn_a"], str(disjoint))
    assert (c.shared, c.only_a, c.only_b, c.exact_rate, c.jaccard_mean, c.stats_a.empty_rate) == (0, 9, 6, None, None, None)
    assert "no shared keys" in render_summary(c)


def test_cli_prints_a_summary_and_writes_the_json_report(tables, tmp_path, capsys):
    report = tmp_path / "report.json"
    assert cli_main(["compare", "--table", tables["syn_a"], "--table", tables["syn_b"], "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "keys: 5 shared, 4 only in A, 1 only in B" in printed and "exact agreement: 1/5 (20.0%)" in printed
    assert "'used cars'  jaccard 0.33" in printed and "A: second hand cars, pre-owned cars" in printed
    data = json.loads(report.read_text())
    assert data["shared"] == 5 and data["a"]["model"] == "teacher" and data["b"]["version"] == "b1"
    assert len(data["sample"]) == 4 and data["stats_b"]["empty_rate"] == 0.2


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["compare", "--table", "T1"], r"compare needs --table twice .* got 1"),
        (["compare", "--table", "syn_a", "--table", "lab_a"], r"different kinds"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(tables, capsys, argv, match):
    argv = [tables.get(arg, arg) for arg in argv]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bulkinfer: error: ") and err.count("\n") == 1
    assert re.search(match, err)


ITEMS = ["Budget Flights", "  two\t\x1fspaces ", "ctrl\x00\x07x", "ＣＯＶＩＤ", "Straße", "x\u200by", "", "MiXeD\x0bCase\x1c"]


def test_items_are_normalised_exactly_like_normalize_key():
    list_type = pa.list_(pa.string())
    lists = pa.chunked_array([pa.array([ITEMS[:3], None, [], ITEMS[3:]], list_type), pa.array([ITEMS[::-1]], list_type)])
    expected = [None if row is None else [normalize_key(item) for item in row] for row in lists.to_pylist()]
    assert _normalised_items(lists).to_pylist() == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=12), max_size=5))
def test_normalisation_matches_normalize_key_on_any_text(items):
    lists = pa.chunked_array([pa.array([items], pa.list_(pa.string()))])
    assert _normalised_items(lists).to_pylist() == [[normalize_key(item) for item in items]]


def test_shards_and_row_groups_do_not_change_the_result(tables, tmp_path):
    split = tmp_path / "syn_b"
    shutil.copytree(tables["syn_b"], split)
    shards = list(split.glob("versions/b1/predictions-*.parquet"))
    assert len(shards) == 1
    rows = pq.read_table(shards[0])
    shards[0].unlink()
    for i, start in enumerate(range(0, rows.num_rows, 4)):
        pq.write_table(rows.slice(start, 4), shards[0].parent / f"predictions-{i:05d}-of-00002.parquet", row_group_size=2)
    whole, parts = compare_tables(tables["syn_a"], tables["syn_b"]), compare_tables(tables["syn_a"], str(split))
    assert dataclasses.replace(parts, seconds=0, b=whole.b) == dataclasses.replace(whole, seconds=0)
