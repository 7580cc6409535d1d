"""Damaged files under readers: a store overwritten in place, a garbage CURRENT; readers answer or say what is wrong."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from bulkinfer.errors import TableError
from bulkinfer.format import layout
from bulkinfer.lookup.store import STORE, Store
from bulkinfer.lookup.table import open_table
from tests.conftest import write_version
from tests.lookup.test_serve import _serve

ANSWERS = {f"query {i}": [f"answer {i}", f"other {i}"] for i in range(3000)}


def _damage(store: Path) -> None:
    """Overwrites 8 KiB in the middle of the file, as a bad disk or a stray write would."""
    data = bytearray(store.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8192] = b"\xa5" * 8192
    with store.open("r+b") as f:  # in place: the same inode a running reader has mapped
        f.write(bytes(data))


def test_integrity_check_finds_an_overwritten_store(tmp_path):
    vdir = write_version(tmp_path / "table", "v1", ANSWERS)
    store = Store(vdir / STORE)
    store.check_integrity()
    _damage(vdir / STORE)
    with pytest.raises(TableError, match="is damaged"):
        store.check_integrity()


def test_open_table_rebuilds_a_damaged_store_from_the_parquet_shards(tmp_path):
    vdir = write_version(tmp_path / "table", "v1", ANSWERS)
    _damage(vdir / STORE)
    with open_table(str(tmp_path / "table"), cache_dir=tmp_path / "cache") as table:
        assert table.store.path.parent.parent == tmp_path / "cache", "the damaged store was used"
        assert all(table.get(f"query {i}")["synonyms"] == [f"answer {i}", f"other {i}"] for i in range(0, 3000, 7))


def test_service_never_fails_with_500_on_a_store_damaged_under_it_and_recovers(tmp_path):
    table = tmp_path / "table"
    vdir = write_version(table, "v1", ANSWERS)
    with _serve(table, cache_dir=str(tmp_path / "cache")) as server, httpx.Client(base_url=server.url) as http:
        assert http.get("/v1/lookup", params={"q": "query 5"}).status_code == 200
        _damage(vdir / STORE)
        statuses = []
        for i in range(300):
            response = http.get("/v1/lookup", params={"q": f"query {i * 10}"})
            statuses.append(response.status_code)
            if response.status_code == 200:
                assert response.json()["synonyms"] == [f"answer {i * 10}", f"other {i * 10}"]
            else:
                assert response.json()["error"]["code"] == "store_damaged"
        assert 500 not in statuses
        deadline = time.monotonic() + 20
        while http.get("/v1/lookup", params={"q": "query 2999"}).status_code != 200:
            assert time.monotonic() < deadline, "the service did not recover"
            time.sleep(0.05)
        assert server.app.table is not None and server.app.table.store.path.parent.parent == tmp_path / "cache"


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x80garbage", b"garbage text !!\n", b"../../other/versions/v1\n"])
def test_service_keeps_serving_through_a_damaged_current_and_says_so(tmp_path, content, caplog):
    table = tmp_path / "table"
    write_version(table, "v1", ANSWERS)
    other = tmp_path / "other"
    write_version(other, "v1", {"query 1": ["from another table"]})
    with _serve(table) as server, httpx.Client(base_url=server.url) as http:
        # Replaced in one rename: a reader polling mid-write would see a second, empty, damage and log it too.
        (table / "CURRENT.new").write_bytes(content)
        os.replace(table / "CURRENT.new", table / layout.CURRENT)
        time.sleep(0.5)  # ten reload intervals
        health = http.get("/healthz").json()
        assert health["status"] == "degraded" and "CURRENT is damaged" in health["last_reload_error"]
        answer = http.get("/v1/lookup", params={"q": "query 1"})
        assert answer.status_code == 200 and answer.json()["synonyms"] == ["answer 1", "other 1"]
        errors = [r for r in caplog.records if "CURRENT is damaged" in r.getMessage()]
        assert len(errors) == 1 and errors[0].exc_info is None, "logged more than once, or with a traceback"
        layout.publish(str(table), "v1")
        time.sleep(0.3)
        assert http.get("/healthz").json()["status"] == "ok"


def test_query_length_is_checked_after_nfkc(tmp_path):
    table = tmp_path / "table"
    write_version(table, "v1", ANSWERS)
    with _serve(table, max_query_chars=100) as server, httpx.Client(base_url=server.url) as http:
        expanding = "\ufdfa" * 60  # 60 characters, 1,080 after NFKC
        for response in (
            http.get("/v1/lookup", params={"q": expanding}),
            http.post("/v1/lookup", json={"queries": ["query 1", expanding]}),
        ):
            assert response.status_code == 413, response.text
            assert response.json()["error"]["code"] == "query_too_long" and "after NFKC" in response.json()["error"]["message"]
        assert http.get("/v1/lookup", params={"q": "query 1"}).status_code == 200
