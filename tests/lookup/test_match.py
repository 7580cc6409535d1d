"""The match index: exact, phrase (token boundaries, longest first), CJK/Thai, ambiguity; the CLI, Python and job surfaces."""

import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bulkinfer import cli
from bulkinfer.errors import TableError
from bulkinfer.format import layout
from bulkinfer.lookup import match, store
from bulkinfer.lookup.table import open_table
from bulkinfer.pipelines.cache_job import run
from tests.conftest import write_corpus, write_version
from tests.fakes import FakeHandler

# concept key -> (key language, [(item, language it was generated for), ...])
CONCEPTS = {
    "covid vaccine": (
        "en",
        [("Covid Jab", "en"), ("vacuna covid", "es"), ("corona impfung", "de"), ("新冠疫苗", "zh"), ("วัคซีนโควิด", "th")],
    ),
    "cheap flights": ("en", [("billige flüge", "de"), ("vuelos baratos", "es"), ("flights", "en"), ("格安航空券", "ja")]),
    "flights": ("en", [("air travel", "en")]),
    "car insurance": ("en", [("car", "en"), ("motor insurance", "en")]),
    "vaccine": ("en", [("covid jab", "en"), ("jab", "en")]),
    "rome": ("it", [("roma", "it"), ("rom", "de")]),
}


def write_table(root, version="v1", concepts=CONCEPTS, *, index=True):
    """A published synonyms version with per-item languages, its store and (unless told not to) its match index."""
    keys = sorted(concepts)
    vdir = root / "versions" / version
    vdir.mkdir(parents=True)
    rows = pa.table(
        {
            "key": keys,
            "language": [concepts[k][0] for k in keys],
            "synonyms": pa.array([[i for i, _ in concepts[k][1]] for k in keys], pa.list_(pa.string())),
            match.ITEM_LANGUAGES: pa.array([[lang for _, lang in concepts[k][1]] for k in keys], pa.list_(pa.string())),
            "model": ["fake-model"] * len(keys),
            "run_id": [version] * len(keys),
        }
    )
    pq.write_table(rows, vdir / "predictions-00000-of-00001.parquet")
    layout.write_manifest(str(vdir), {"version": version, "output_column": "synonyms", "output_kind": "list", "run_id": version})
    store.write_store(str(root), version)
    if index:
        match.write_match_index(str(root), version)
    layout.publish(str(root), version)
    return vdir


def spans(answer):
    return [(m["item"], m["concept"], m["start"], m["end"]) for m in answer["matches"]]


@pytest.fixture
def table(tmp_path):
    write_table(tmp_path)
    with open_table(str(tmp_path), cache_dir=tmp_path / "cache") as t:
        yield t


def test_exact_matches_the_whole_normalised_query_as_an_item_or_a_key(table):
    got = table.match("  VACUNA   Covid ", exact=True)
    assert got == {
        "query": "  VACUNA   Covid ",
        "key": "vacuna covid",
        "matches": [{"concept": "covid vaccine", "item": "vacuna covid", "language": "es", "start": 0, "end": 12}],
        "version": "v1",
    }
    assert spans(table.match("Cheap Flights", exact=True)) == [("cheap flights", "cheap flights", 0, 13)], "a concept key is an item"
    assert table.match("vacuna covid cerca de mí", exact=True)["matches"] == [], "exact wants the whole query"
    assert table.match("", exact=True)["matches"] == [] and table.match("")["matches"] == []


def test_phrases_inside_a_query_longest_first_without_overlap(table):
    assert spans(table.match("Vacuna COVID cerca de mí")) == [("vacuna covid", "covid vaccine", 0, 12)]
    assert spans(table.match("corona impfung termin")) == [("corona impfung", "covid vaccine", 0, 14)]
    # "cheap flights" (the key) beats the shorter "flights" inside it; "billige flüge" and "rom" are separate phrases.
    assert spans(table.match("cheap flights or billige Flüge nach Rom")) == [
        ("cheap flights", "cheap flights", 0, 13),
        ("billige flüge", "cheap flights", 17, 30),
        ("rom", "rome", 36, 39),
    ]
    got = table.match("motor insurance for my car")
    assert spans(got) == [("motor insurance", "car insurance", 0, 15), ("car", "car insurance", 23, 26)]
    assert [m["language"] for m in got["matches"]] == ["en", "en"]
    assert got["key"][23:26] == "car", "offsets index the normalised key"


def test_phrases_match_on_token_boundaries_only(table):
    assert table.match("scary cartoons")["matches"] == [], "'car' inside 'scary' or 'cartoons' is no match"
    assert table.match("romantic rome")["matches"][0]["item"] == "rome"
    assert spans(table.match("car-insurance")) == [("car", "car insurance", 0, 3)], "punctuation is a boundary"
    assert spans(table.match("romaní roma")) == [("roma", "rome", 7, 11)]


def test_scripts_without_spaces_match_on_characters(table):
    assert spans(table.match("北京新冠疫苗接种点")) == [("新冠疫苗", "covid vaccine", 2, 6)]
    assert [m["language"] for m in table.match("北京新冠疫苗接种点")["matches"]] == ["zh"]
    assert spans(table.match("東京発格安航空券")) == [("格安航空券", "cheap flights", 3, 8)]
    assert spans(table.match("จองวัคซีนโควิดใกล้ฉัน")) == [("วัคซีนโควิด", "covid vaccine", 3, 14)]
    assert spans(table.match("新冠疫苗 and vacuna covid")) == [
        ("新冠疫苗", "covid vaccine", 0, 4),
        ("vacuna covid", "covid vaccine", 9, 21),
    ]


def test_an_item_several_concepts_claim_returns_all_of_them_ranked(table):
    # "covid jab" is in the answers of "covid vaccine" (first item) and of "vaccine" (first item): a tie, by key.
    assert [(m["concept"], m["start"], m["end"]) for m in table.match("covid jab near me")["matches"]] == [
        ("covid vaccine", 0, 9),
        ("vaccine", 0, 9),
    ]
    # "flights" is the concept "flights" itself and an item of "cheap flights": the concept named by it comes first.
    assert [m["concept"] for m in table.match("flights", exact=True)["matches"]] == ["flights", "cheap flights"]
    summary = table.match_index().meta
    assert summary["ambiguous_items"] == 2
    assert summary["ambiguous_examples"] == [
        {"item": "covid jab", "concepts": ["covid vaccine", "vaccine"], "claimed_by": 2},
        {"item": "flights", "concepts": ["flights", "cheap flights"], "claimed_by": 2},
    ]


def test_ranking_prefers_the_earlier_item_of_an_answer():
    rows = pa.table({"key": ["a", "b", "c"], "synonyms": [["x", "shared"], ["shared"], ["y", "z", "shared"]]})
    claims = dict(match.collect_claims(rows, "synonyms"))
    assert [c for c, _ in claims["shared"]] == ["b", "a", "c"]
    assert claims["a"] == [("a", None)] and set(claims) == {"a", "b", "c", "x", "y", "z", "shared"}
    summary = match.summarise_claims(list(claims.items()))
    assert (summary.items, summary.concepts, summary.ambiguous_items) == (7, 3, 1)


def test_an_item_claimed_by_thousands_of_concepts_names_ten_of_them_in_the_manifest():
    # A generic item ("car insurance" in every answer) must not put every concept key into the manifest.
    n = 5000
    rows = pa.table({"key": [f"concept {i:04d}" for i in range(n)], "synonyms": [["car insurance", f"own {i}"] for i in range(n)]})
    summary = match.match_summary(rows, "synonyms")
    assert (summary["items"], summary["concepts"], summary["ambiguous_items"]) == (2 * n + 1, n, 1)
    assert summary["ambiguous_examples"] == [
        {"item": "car insurance", "concepts": [f"concept {i:04d}" for i in range(10)], "claimed_by": n}
    ]
    claims = match.collect_claims(rows, "synonyms")
    assert match.summarise_claims(claims).to_dict() == summary


def test_items_are_normalised_and_deduplicated_per_concept():
    rows = pa.table({"key": ["k"], "language": ["de"], "synonyms": [["Straße", "STRASSE", "  strasse ", "", "k"]]})
    assert match.collect_claims(rows, "synonyms") == [("k", [("k", "de")]), ("strasse", [("k", "de")])]


def test_claims_of_repeated_keys_short_language_lists_and_missing_answers():
    rows = pa.table(
        {
            "key": ["k", "k", "j"],  # one concept in two rows (two languages), as a fan-out writes it
            "language": ["en", "de", "en"],
            "synonyms": pa.array([["A", "b"], None, ["b", "c", ""]], pa.list_(pa.string())),
            match.ITEM_LANGUAGES: pa.array([["fr"], None, None], pa.list_(pa.string())),
        }
    )
    assert match.collect_claims(rows, "synonyms") == [
        ("a", [("k", "fr")]),
        ("b", [("j", "en"), ("k", "en")]),  # "b" is first in j's answer, second in k's; k's list names no language for it
        ("c", [("j", "en")]),
        ("j", [("j", "en")]),
        ("k", [("k", "en")]),  # a concept claims an item once: its first row
    ]
    assert match.match_summary(rows, "synonyms") == {
        "items": 5,
        "concepts": 2,
        "ambiguous_items": 1,
        "ambiguous_examples": [{"item": "b", "concepts": ["j", "k"], "claimed_by": 2}],
    }


@pytest.mark.parametrize(
    ("text", "i", "expected"),
    [("ab cd", 2, True), ("abcd", 2, False), ("a-b", 1, True), ("新冠", 1, True), ("नमस्ते", 2, False), ("x", 0, True), ("x", 1, True)],
)
def test_token_boundaries(text, i, expected):
    assert match.is_boundary(text, i) is expected
    assert (i in match.boundaries(text)) is expected


@pytest.mark.parametrize(
    "text",
    [
        "vacuna covid cerca de mí",
        "car-insurance",
        "北京新冠疫苗接种点 near",
        "จองวัคซีนโควิด",
        "नमस्ते दुनिया",
        "a_b 1.5",
        "two  spaces ",
        " covid jab",
    ],
)
def test_all_boundaries_at_once_agree_with_one_at_a_time(text):
    assert match.boundaries(text) == {i for i in range(len(text) + 1) if match.is_boundary(text, i)}


def mapped_files():
    """Paths this process has memory-mapped (Linux)."""
    return {line.split(maxsplit=5)[5] for line in Path("/proc/self/maps").read_text().splitlines() if len(line.split(maxsplit=5)) == 6}


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the memory maps of the process from /proc")
def test_opening_reads_metadata_only_and_the_first_match_maps_the_trie_and_claims(tmp_path):
    vdir = write_table(tmp_path)
    files = {str((vdir / name).resolve()) for name in (match.AUTOMATON, match.CLAIMS)}
    index = match.MatchIndex(vdir)
    assert len(index) == 20 and not files & mapped_files(), "opening maps nothing"
    assert index.exact("roma")[0]["concept"] == "rome"
    assert files <= mapped_files(), "the trie and the claims are memory-mapped, not read into the process"
    assert index.phrases("roma antica")[0]["concept"] == "rome"
    index.close()
    assert not files & mapped_files(), "closing unmaps them"


def test_a_version_without_an_index_gets_one_built_once_in_the_cache(tmp_path):
    table_dir, cache = tmp_path / "table", tmp_path / "cache"
    write_table(table_dir, index=False)
    with open_table(str(table_dir), cache_dir=cache) as table:
        assert spans(table.match("vuelos baratos a roma")) == [("vuelos baratos", "cheap flights", 0, 14), ("roma", "rome", 17, 21)]
        built = table.match_index().directory
    assert built.parent.parent == cache and not (table_dir / "versions" / "v1" / match.MATCH).exists()
    with open_table(str(table_dir), cache_dir=cache) as again:
        assert again.match_index().directory == built


def test_a_stale_automaton_is_refused(tmp_path):
    vdir = write_table(tmp_path)
    (vdir / match.AUTOMATON).write_bytes(b"not the automaton")
    with open_table(str(tmp_path)) as table, pytest.raises(TableError, match="rebuild the version's match index"):
        table.match("covid jab")


def test_an_index_of_an_older_format_is_passed_over_then_rewritten_by_export_store(tmp_path, caplog):
    vdir = write_table(tmp_path / "t")
    (vdir / match.MATCH).unlink()
    db = sqlite3.connect(vdir / match.MATCH)  # what format 1 left: its metadata, a file the reader no longer knows
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('format', '1')")
    db.commit(), db.close()
    with open_table(str(tmp_path / "t"), cache_dir=tmp_path / "cache") as table:
        assert spans(table.match("vacuna covid")) == [("vacuna covid", "covid vaccine", 0, 12)]
        assert table.match_index().directory.is_relative_to(tmp_path / "cache"), "rebuilt into the cache, the old one never read"
    assert "is a match index of format 1, this bulkinfer reads format 2" in caplog.text
    assert cli.main(["export", "store", "--table", str(tmp_path / "t")]) == 0
    with open_table(str(tmp_path / "t"), cache_dir=tmp_path / "cache2") as table:
        assert table.match_index().directory == vdir and table.match_index().meta["format"] == match.FORMAT
        assert spans(table.match("vacuna covid")) == [("vacuna covid", "covid vaccine", 0, 12)]


def test_label_tables_have_no_match_index(tmp_path):
    vdir = tmp_path / "versions" / "v1"
    vdir.mkdir(parents=True)
    pq.write_table(pa.table({"key": ["lemon"], "label": ["berry"], "model": ["m"], "run_id": ["v1"]}), vdir / "predictions-0.parquet")
    layout.write_manifest(str(vdir), {"version": "v1", "output_column": "label", "output_kind": "label", "run_id": "v1"})
    assert match.write_match_index(str(tmp_path), "v1") is None
    layout.publish(str(tmp_path), "v1")
    with open_table(str(tmp_path), cache_dir=tmp_path / "cache") as table, pytest.raises(TableError, match="only list tasks"):
        table.match("lemon")


def test_the_job_publishes_the_index_and_reports_ambiguity(tmp_path):
    corpus = write_corpus(tmp_path / "q.parquet", ["covid vaccine", "vaccine", "cheap flights"])
    answers = {"covid vaccine": " covid jab, vacuna covid", "vaccine": " covid jab, jab", "cheap flights": " vuelos baratos"}
    manifest = run(
        ["--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "t"), "--model", "fake-model", "--run_id", "r1"],
        model_handler=FakeHandler(answers=answers),
    )
    assert (tmp_path / "t" / "versions" / "r1" / match.MATCH).is_file() and (tmp_path / "t" / "versions" / "r1" / match.AUTOMATON).is_file()
    assert manifest["match"] == {
        "items": 7,
        "concepts": 3,
        "ambiguous_items": 1,
        "ambiguous_examples": [{"item": "covid jab", "concepts": ["covid vaccine", "vaccine"], "claimed_by": 2}],
    }
    assert not (tmp_path / "t" / "versions" / "r1" / match.SAVED_CLAIMS).exists(), "the claims kept for the index are gone after publish"
    with open_table(str(tmp_path / "t"), cache_dir=tmp_path / "cache") as table:
        assert table.match_index().directory == tmp_path / "t" / "versions" / "r1", "the version's own index, nothing built"
        assert spans(table.match("vuelos baratos a Roma")) == [("vuelos baratos", "cheap flights", 0, 14)]


def test_cli_match_prints_one_json_object_per_query(tmp_path, capsys, monkeypatch):
    write_table(tmp_path)
    assert cli.main(["match", "--table", str(tmp_path), "vacuna covid cerca de mí", "Corona Impfung Termin", "nothing"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [sorted(line) for line in lines] == [["key", "matches", "query"]] * 3
    assert [[m["concept"] for m in line["matches"]] for line in lines] == [["covid vaccine"], ["covid vaccine"], []]
    assert lines[1]["matches"][0] == {"concept": "covid vaccine", "item": "corona impfung", "language": "de", "start": 0, "end": 14}
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("billige flüge nach rom\n"))
    assert cli.main(["match", "--table", str(tmp_path), "--exact"]) == 0
    assert json.loads(capsys.readouterr().out)["matches"] == []


def test_cli_match_on_a_missing_table_is_a_user_error(tmp_path, capsys):
    assert cli.main(["match", "--table", str(tmp_path / "nothing"), "q"]) == 2
    assert "has no published version" in capsys.readouterr().err


def test_write_version_helper_builds_the_index_too(tmp_path):
    write_version(tmp_path, "v1", {"covid vaccine": ["covid jab"]})
    with open_table(str(tmp_path)) as table:
        assert table.match_index().directory == tmp_path / "versions" / "v1"
        assert spans(table.match("a covid jab")) == [("covid jab", "covid vaccine", 2, 11)]


def _index_files(vdir):
    meta = dict(sqlite3.connect(vdir / match.MATCH).execute("SELECT name, value FROM meta").fetchall())
    return (vdir / match.AUTOMATON).read_bytes(), (vdir / match.CLAIMS).read_bytes(), meta


def test_an_index_built_from_the_manifests_claims_is_the_one_built_from_the_shards(tmp_path):
    vdir = write_table(tmp_path)
    from_shards = _index_files(vdir)
    rows = layout.read_shards(str(vdir), layout.PREDICTIONS)
    summary = match.match_summary(rows, "synonyms", keep_in=str(vdir))
    assert (vdir / match.SAVED_CLAIMS).is_file()
    for name in (match.MATCH, match.AUTOMATON, match.CLAIMS):
        (vdir / name).unlink()
    built = match.write_match_index(str(tmp_path), "v1")
    assert built is not None and built.to_dict() == summary
    assert _index_files(vdir) == from_shards
    assert not (vdir / match.SAVED_CLAIMS).exists()


def test_claims_kept_from_other_shards_are_passed_over(tmp_path):
    vdir = write_table(tmp_path, index=False)
    stale = pa.table({"key": ["other"], "language": ["en"], "synonyms": pa.array([["nothing like it"]], pa.list_(pa.string()))})
    match.match_summary(stale, "synonyms", keep_in=str(vdir))
    # The shards change after the claims were kept (never in a job; a hand-edited version): the shards win.
    shard = vdir / "predictions-00000-of-00001.parquet"
    pq.write_table(pq.read_table(shard), shard, compression="gzip")
    match.write_match_index(str(tmp_path), "v1")
    assert match.MatchIndex(vdir).exact("covid jab")[0]["concept"] == "covid vaccine"
    assert match.MatchIndex(vdir).exact("nothing like it") == []


def _claims_by_the_rules(rows):
    """collect_claims as the module docstring states its rules, row by row in Python."""
    from bulkinfer.keys import normalize_key

    found = {}
    order = 0
    for row in rows:  # each concept's key is an item of its own
        found.setdefault(row["key"], []).append((0, -1, row["key"], order, row["language"]))
        order += 1
    for row in rows:
        stated = row.get(match.ITEM_LANGUAGES) or []
        for position, spelling in enumerate(row["synonyms"] or []):
            item = normalize_key(spelling) if spelling else ""
            if item:
                language = stated[position] if position < len(stated) else row["language"]
                found.setdefault(item, []).append((0 if item == row["key"] else 1, position, row["key"], order, language))
                order += 1
    claims = []
    for item in sorted(found):
        ranked, seen = [], set()
        for _, _, concept, _, language in sorted(found[item]):
            if concept not in seen:
                seen.add(concept)
                ranked.append((concept, language))
        claims.append((item, ranked))
    return claims


@pytest.mark.parametrize("seed", range(8))
def test_claims_by_column_follow_the_ranking_rules(seed):
    import random

    rng = random.Random(seed)
    spellings = ["Covid Jab", "covid  jab", "jab", "vacuna", "", " ", "straße", "STRASSE", "新冠疫苗", "key 1", "Key 2", None]
    rows = [
        {
            "key": f"key {rng.randint(0, 9)}",
            "language": rng.choice(["en", "de", None]),
            "synonyms": rng.choice([None, [], rng.sample(spellings, rng.randint(1, 7))]),
            match.ITEM_LANGUAGES: rng.choice([None, [], ["es"], ["fr", None, "it"]]),
        }
        for _ in range(40)
    ]
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("key", pa.string()),
                ("language", pa.string()),
                ("synonyms", pa.list_(pa.string())),
                (match.ITEM_LANGUAGES, pa.list_(pa.string())),
            ]
        ),
    )
    expected = _claims_by_the_rules(rows)
    assert expected and any(len(ranked) > 1 for _, ranked in expected), "the data has ambiguous items"
    assert match.collect_claims(table, "synonyms") == [(item, [tuple(c) for c in ranked]) for item, ranked in expected]
