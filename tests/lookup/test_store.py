"""The embedded store and the lookup API on it: built at publish, built once for older versions, never stale."""

import json
import os
import subprocess
import sys
import threading

import pyarrow as pa
import pytest

from bulkinfer.errors import TableError
from bulkinfer.lookup import store
from bulkinfer.lookup.table import open_table
from bulkinfer.pipelines.cache_job import run
from tests.conftest import write_corpus, write_version
from tests.fakes import FakeHandler

# Keys as the job stores them: normalised.
ANSWERS = {"covid vaccine": ["covid jab", "coronavirus vaccine"], "cheap flights": ["budget airlines"], "strasse": ["road"]}


def test_the_job_writes_the_store_before_it_publishes(tmp_path):
    corpus = write_corpus(tmp_path / "q.parquet", ["Covid Vaccine", "  covid   VACCINE ", "cheap flights", "lemon"])
    run(["--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", "fake-model", "--run_id", "r1"],
        model_handler=FakeHandler())  # fmt: skip
    vdir = tmp_path / "table" / "versions" / "r1"
    assert (vdir / store.STORE).is_file()
    with open_table(str(tmp_path / "table"), cache_dir=tmp_path / "cache") as table:
        assert table.store.path == vdir / store.STORE, "the version's own store is read, nothing is built"
        assert not (tmp_path / "cache").exists()
        row = table.get("ＣＯＶＩＤ　ｖａｃｃｉｎｅ")  # full-width letters and an ideographic space
        assert row is not None
        assert row["key"] == "covid vaccine" and row["synonyms"] == ["covid vaccine alt", "other covid vaccine"]
        assert row["source_rows"] == 2 and row["run_id"] == "r1" and row["model"] == "fake-model" and row["task"] == "synonyms"
        assert row["fingerprint"] and row["model_digest"] and row["raw_output"] == " covid vaccine alt, other covid vaccine"


def test_lookups_normalise_batch_and_keep_order(tmp_path):
    write_version(tmp_path, "v1", ANSWERS)
    with open_table(str(tmp_path)) as table:
        assert len(table) == 3 and table.version == "v1" and table.output_column == "synonyms"
        assert "  CHEAP\tflights " in table and "STRASSE" in table and "nope" not in table and 42 not in table
        got = table.get_many(["nope", "Cheap Flights", "COVID  vaccine", "cheap flights", ""])
        assert [r and r["key"] for r in got] == [None, "cheap flights", "covid vaccine", "cheap flights", None]
        assert got[1] == got[3] and got[1] is not got[3], "a repeated query gets its own row dict"
        assert table.get_many([]) == []
        many = [f"q{i}" for i in range(1200)] + ["covid vaccine"]  # more than one IN (...) statement
        assert table.get_many(many)[-1]["synonyms"] == ["covid jab", "coronavirus vaccine"]
        assert table.answer_many(["Straße", "unknown"]) == [
            {
                "query": "Straße",
                "key": "strasse",
                "found": True,
                "synonyms": ["road"],
                "version": "v1",
                "model": "fake-model",
                "run_id": "v1",
            },  # noqa: E501
            {"query": "unknown", "key": "unknown", "found": False, "synonyms": [], "version": "v1"},
        ]
        assert table.answer(" cheap FLIGHTS") == {
            "query": " cheap FLIGHTS",
            "key": "cheap flights",
            "found": True,
            "synonyms": ["budget airlines"],
            "version": "v1",
            "model": "fake-model",
            "run_id": "v1",
        }


def test_constant_columns_are_stored_once(tmp_path):
    write_version(tmp_path, "v1", ANSWERS)
    s = store.Store(tmp_path / "versions" / "v1" / store.STORE)
    assert s.constants["model"] == "fake-model" and s.constants["engine"] == "none"
    assert "synonyms" in s.columns and "model" not in s.columns
    assert [k for k, _ in s.items()] == sorted(ANSWERS)
    s.close()


def test_a_version_without_a_store_gets_one_built_once_in_the_cache(tmp_path):
    table, cache = tmp_path / "table", tmp_path / "cache"
    write_version(table, "v1", ANSWERS, store=False)
    first = open_table(str(table), cache_dir=cache)
    assert first.store.path.parent.parent == cache and first.get("covid vaccine")["synonyms"][0] == "covid jab"
    built = first.store.path.stat().st_mtime_ns
    second = open_table(str(table), cache_dir=cache)
    assert second.store.path == first.store.path and second.store.path.stat().st_mtime_ns == built, "built again"
    first.close(), second.close()


def test_cli_export_store_writes_it_into_the_version(tmp_path):
    write_version(tmp_path, "v1", ANSWERS, store=False)
    done = _cli("export", "store", "--table", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"] == "v1"
    with open_table(str(tmp_path), cache_dir=tmp_path / "cache") as table:
        assert table.store.path == tmp_path / "versions" / "v1" / store.STORE and len(table) == 3


def test_a_store_of_another_manifest_is_passed_over(tmp_path):
    vdir = write_version(tmp_path / "old", "v1", ANSWERS)
    # The version is written again under the same name (a rerun of an unpublished run id,
    # say) and the old store file is left next to it.
    fresh = write_version(tmp_path / "table", "v1", {"new key": ["fresh"]}, store=False)
    os.replace(vdir / store.STORE, fresh / store.STORE)
    with open_table(str(tmp_path / "table"), cache_dir=tmp_path / "cache") as table:
        assert table.store.path.parent.parent == tmp_path / "cache"
        assert table.get("covid vaccine") is None and table.get("new key")["synonyms"] == ["fresh"]


def test_a_corrupt_store_is_passed_over(tmp_path):
    vdir = write_version(tmp_path, "v1", ANSWERS)
    (vdir / store.STORE).write_bytes(b"SQLite format 3\x00 but then garbage" * 100)
    with open_table(str(tmp_path), cache_dir=tmp_path / "cache") as table:
        assert table.get("cheap flights")["synonyms"] == ["budget airlines"]


def test_a_key_twice_is_refused(tmp_path):
    rows = pa.table({"key": ["a", "b", "a"], "synonyms": [["x"], ["y"], ["z"]]})
    with pytest.raises(TableError, match=r"version v1 holds a key twice"):
        store.build_store(tmp_path / "s.sqlite", rows, "v1", {})
    assert not list(tmp_path.iterdir()), "a refused build leaves no file behind"


def test_an_empty_version_opens(tmp_path):
    write_version(tmp_path, "v1", {})
    with open_table(str(tmp_path)) as table:
        assert len(table) == 0 and table.get("x") is None and table.get_many(["x"]) == [None]


def test_threads_share_one_table(tmp_path):
    answers = {f"query {i}": [f"answer {i}"] for i in range(2000)}
    write_version(tmp_path, "v1", answers)
    table = open_table(str(tmp_path))
    wrong: list[str] = []

    def read(offset: int) -> None:
        for i in range(offset, 2000, 7):
            row = table.get(f"QUERY {i}")
            if row is None or row["synonyms"] != [f"answer {i}"]:
                wrong.append(f"query {i}")
        if table.get_many([f"query {offset}", "none"])[0] is None:
            wrong.append(f"batch {offset}")

    threads = [threading.Thread(target=read, args=(n,)) for n in range(7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    table.close()
    with pytest.raises(Exception, match="closed"):
        table.get("query 1")


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "bulkinfer.cli", *args], capture_output=True, text=True, timeout=120, env=env)


def test_a_table_keyed_by_another_normaliser_version_opens_with_a_warning(tmp_path, caplog):
    import json

    from bulkinfer.keys import KEY_VERSION
    from bulkinfer.lookup.table import open_table
    from tests.conftest import write_version

    table = tmp_path / "t"
    write_version(table, "v1", {"a": ["b"]}, store=False)
    manifest_path = table / "versions" / "v1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["key_normalizer"] = KEY_VERSION - 1
    manifest_path.write_text(json.dumps(manifest))
    with caplog.at_level("WARNING", logger="bulkinfer.lookup.table"):
        assert open_table(str(table), cache_dir=tmp_path / "cache").get("A")["synonyms"] == ["b"]
    assert f"key normaliser version {KEY_VERSION - 1}, this reader uses {KEY_VERSION}" in caplog.text


def test_rows_are_encoded_by_column_exactly_as_orjson_encodes_them():
    """Strings needing escapes, Unicode, nulls everywhere, lists with null items, integers, booleans and a float column."""
    import orjson

    from bulkinfer.lookup.store import _encoded_text

    rows = pa.table(
        {
            "text": pa.array(["plain", 'a "quote"', "back\\slash", "new\nline", "\x07bell", "ünï 新冠", "", None], pa.string()),
            "items": pa.array([["a", "b"], [], None, ["x\ty", None], ['"q"'], ["ünï"], [""], ["z"]], pa.list_(pa.string())),
            "count": pa.array([1, None, -3, 0, 2**40, 5, 6, 7], pa.int64()),
            "small": pa.array([1, 2, 3, None, 5, 6, 7, 8], pa.int32()),
            "flag": pa.array([True, False, None, True, False, True, False, True]),
            "score": pa.array([0.1, 1e-5, None, 2.0, 3.5, 1e20, -0.0, 7.25]),
        }
    )
    columns = rows.column_names
    for batch in (rows.to_batches()[0], rows.to_batches()[0].slice(3)):
        expected = [orjson.dumps(values) for values in zip(*(batch.column(c).to_pylist() for c in columns), strict=True)]
        assert _encoded_text(batch, columns).to_pylist() == expected
    assert _encoded_text(rows.to_batches()[0], []).to_pylist() == [b"[]"] * rows.num_rows


def _digest(table: pa.Table, batch_rows: int, salt: str = "s") -> str:
    digest = store.RowsDigest(["language", "answer", "tokens"], salt=salt)
    for batch in table.to_batches(batch_rows):
        digest.update(batch)
    return digest.hexdigest()


def test_the_rows_digest_is_the_same_in_any_order_and_cut_and_changes_with_any_value():
    rows = pa.table(
        {
            "key": [f"key {i}" for i in range(50)],
            "language": [None if i % 3 else "de" for i in range(50)],
            "answer": [[f"item {i}", "shared"] for i in range(50)],
            "tokens": list(range(50)),
        }
    )
    digest = _digest(rows, 7)
    assert _digest(rows.take(pa.array(list(range(49, -1, -1)))), 50) == digest, "rows in another order, in one batch"
    assert _digest(rows, 1) == digest
    assert _digest(rows.drop_columns(["language"]), 7) != digest, "an absent column counts as nulls, not as the values"
    assert _digest(rows, 7, salt="other") != digest
    changed = rows.set_column(3, "tokens", pa.array([*range(49), 0]))
    assert _digest(changed, 7) != digest
    swapped = rows.set_column(2, "answer", pa.array([[f"item {i}", "shared"] for i in [1, 0, *range(2, 50)]]))
    assert _digest(swapped, 7) != digest, "two rows' answers swapped: each row is hashed with its key"
    assert _digest(pa.concat_tables([rows, rows.slice(0, 1)]), 7) != digest, "a row twice is not the row once"
