"""The match index behind the HTTP service (real uvicorn, real HTTP) and in Redis (a real redis-server)."""

import json

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bulkinfer.format import layout
from bulkinfer.lookup.redis_export import RedisExportConfig, RedisTable, connect, export_version
from tests.lookup.test_match import write_table
from tests.lookup.test_serve import _serve


def test_http_match_get_and_post(tmp_path):
    write_table(tmp_path)
    with _serve(tmp_path) as server, httpx.Client(base_url=server.url) as http:
        got = http.get("/v1/match", params={"q": "Vacuna COVID cerca de mí"})
        assert got.status_code == 200 and got.headers["x-bulkinfer-version"] == "v1"
        assert got.json() == {
            "query": "Vacuna COVID cerca de mí",
            "key": "vacuna covid cerca de mí",
            "matches": [{"concept": "covid vaccine", "item": "vacuna covid", "language": "es", "start": 0, "end": 12}],
            "version": "v1",
        }
        assert http.get("/v1/match", params={"q": "vacuna covid cerca", "exact": "true"}).json()["matches"] == []
        assert http.get("/v1/match", params={"q": "vacuna covid", "exact": "1"}).json()["matches"][0]["concept"] == "covid vaccine"
        batch = http.post("/v1/match", json={"queries": ["北京新冠疫苗接种点", "billige flüge nach rom", "nothing"]})
        assert batch.status_code == 200 and batch.json()["version"] == "v1"
        results = batch.json()["results"]
        assert [[(m["item"], m["concept"]) for m in r["matches"]] for r in results] == [
            [("新冠疫苗", "covid vaccine")],
            [("billige flüge", "cheap flights"), ("rom", "rome")],
            [],
        ]
        exact = http.post("/v1/match", json={"queries": ["flights", "cheap flights to rome"], "exact": True}).json()["results"]
        assert [[m["concept"] for m in r["matches"]] for r in exact] == [["flights", "cheap flights"], []]
        assert "/v1/match" in http.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/v1/match", None, 422, "missing_q"),
        ("GET", "/v1/match?q=a&exact=maybe", None, 422, "bad_exact"),
        ("GET", "/v1/match?q=" + "a" * 1025, None, 413, "query_too_long"),
        ("POST", "/v1/match", {"queries": ["x"], "exact": "yes"}, 422, "bad_exact"),
        ("POST", "/v1/match", {"queries": ["x", 3]}, 422, "not_a_string"),
        ("POST", "/v1/match", {"queries": ["x"] * 1001}, 413, "batch_too_large"),
        ("POST", "/v1/match", b"not json", 400, "bad_json"),
        ("DELETE", "/v1/match", None, 405, "method_not_allowed"),
    ],
)
def test_http_match_bad_input_is_4xx_with_a_reason(tmp_path, method, path, body, status, code):
    write_table(tmp_path)
    with _serve(tmp_path) as server, httpx.Client(base_url=server.url) as http:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
        got = http.request(method, path, **kw)
        assert got.status_code == status and got.json()["error"]["code"] == code


def test_http_match_on_a_label_table_is_404(tmp_path):
    vdir = tmp_path / "versions" / "v1"
    vdir.mkdir(parents=True)
    pq.write_table(pa.table({"key": ["lemon"], "label": ["berry"], "model": ["m"], "run_id": ["v1"]}), vdir / "predictions-0.parquet")
    layout.write_manifest(str(vdir), {"version": "v1", "output_column": "label", "output_kind": "label", "run_id": "v1"})
    layout.publish(str(tmp_path), "v1")
    with _serve(tmp_path) as server, httpx.Client(base_url=server.url) as http:
        assert http.get("/v1/lookup", params={"q": "lemon"}).json()["label"] == "berry"
        got = http.get("/v1/match", params={"q": "lemon"})
        assert got.status_code == 404 and got.json()["error"]["code"] == "no_match_index"


def test_redis_export_writes_exact_matches(tmp_path, redis_url):
    write_table(tmp_path)
    summary = export_version(str(tmp_path), RedisExportConfig(url=redis_url, name="matches", batch_keys=3))
    assert summary["match_items"] == 20
    client = connect(redis_url)
    # What a reader in any language does: GET the pointer, then GET the normalised query under :m:.
    assert json.loads(client.get("bulkinfer:matches:v1:m:flights")) == [
        {"concept": "flights", "language": "en"},
        {"concept": "cheap flights", "language": "en"},
    ]
    reader = RedisTable(redis_url, "matches")
    assert reader.match("  Vuelos   BARATOS ") == {
        "query": "  Vuelos   BARATOS ",
        "key": "vuelos baratos",
        "matches": [{"concept": "cheap flights", "item": "vuelos baratos", "language": "es", "start": 0, "end": 14}],
        "version": "v1",
    }
    assert [r["matches"] for r in reader.match_many(["nothing", "新冠疫苗"])] == [
        [],
        [{"concept": "covid vaccine", "item": "新冠疫苗", "language": "zh", "start": 0, "end": 4}],
    ]
    assert reader.match_many([]) == []
