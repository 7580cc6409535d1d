"""The HTTP lookup service on a real uvicorn server and real HTTP: answers, 4xx for bad input, hot reload under load."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn

from bulkinfer.errors import ConfigError
from bulkinfer.format import layout
from bulkinfer.lookup.serve import LookupApp, ServeConfig
from bulkinfer.testing import free_port
from tests.conftest import write_version

V1 = {"covid vaccine": ["covid jab"], "cheap flights": ["budget airlines"], **{f"query {i}": [f"v1 {i}"] for i in range(200)}}
V2 = {"covid vaccine": ["coronavirus vaccine"], **{f"query {i}": [f"v2 {i}"] for i in range(200)}}


class _Server:
    """A uvicorn server running the app in a thread of the test process."""

    def __init__(self, config: ServeConfig):
        self.app = LookupApp(config)
        self.url = f"http://127.0.0.1:{config.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=config.port, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self):
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self._server.should_exit = True
        self._thread.join(timeout=20)


def _serve(table, **kw):
    return _Server(ServeConfig(table=str(table), port=free_port(), reload_interval_s=0.05, close_grace_s=0.5, **kw))


def test_lookups_answer_with_the_version(tmp_path):
    write_version(tmp_path, "v1", V1)
    with _serve(tmp_path) as server, httpx.Client(base_url=server.url) as http:
        hit = http.get("/v1/lookup", params={"q": "ＣＯＶＩＤ　 Vaccine"})
        assert hit.status_code == 200 and hit.headers["x-bulkinfer-version"] == "v1"
        assert hit.json() == {
            "query": "ＣＯＶＩＤ　 Vaccine",
            "key": "covid vaccine",
            "found": True,
            "synonyms": ["covid jab"],
            "version": "v1",
            "model": "fake-model",
            "run_id": "v1",
        }
        assert http.get("/v1/lookup?q=nothing+here").json() == {
            "query": "nothing here", "key": "nothing here", "found": False, "synonyms": [], "version": "v1",
        }  # fmt: skip
        assert http.get("/v1/lookup", params={"q": ""}).json()["found"] is False
        batch = http.post("/v1/lookup", json={"queries": ["cheap  FLIGHTS", "nope", "query 7"]})
        assert batch.status_code == 200 and batch.json()["version"] == "v1"
        assert [(r["key"], r["found"]) for r in batch.json()["results"]] == [("cheap flights", True), ("nope", False), ("query 7", True)]
        assert http.post("/v1/lookup", json={"queries": []}).json() == {"version": "v1", "results": []}

        health = http.get("/healthz").json()
        assert health["status"] == "ok" and health["version"] == "v1" and health["keys"] == len(V1) and health["last_reload_error"] is None
        metrics = http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'bulkinfer_http_requests_total{route="/v1/lookup",status="200"} 5.0' in metrics.text
        assert 'bulkinfer_lookups_total{result="hit"} 3.0' in metrics.text and 'bulkinfer_lookups_total{result="miss"} 3.0' in metrics.text
        assert 'bulkinfer_table_version_info{version="v1"} 1.0' in metrics.text
        assert "bulkinfer_http_request_duration_seconds_bucket" in metrics.text
        spec = http.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.") and set(spec["paths"]["/v1/lookup"]) == {"get", "post"}
        assert spec["paths"]["/v1/lookup"]["get"]["parameters"][0]["schema"]["maxLength"] == 1024
        assert "swagger-ui" in http.get("/docs").text


@pytest.fixture(scope="module")
def served_v1(tmp_path_factory):
    """A client of one server on a published v1, shared by the bad-input cases: none changes the table."""
    table = tmp_path_factory.mktemp("served")
    write_version(table, "v1", V1)
    with _serve(table) as server, httpx.Client(base_url=server.url) as http:
        yield http


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/v1/lookup?q=" + "a" * 1025, None, 413, "query_too_long"),
        ("POST", "/v1/lookup", {"queries": ["x"] * 1001}, 413, "batch_too_large"),
        ("POST", "/v1/lookup", {"queries": ["ok", "b" * 1025]}, 413, "query_too_long"),
        ("POST", "/v1/lookup", b'{"queries": ["' + b"c" * (1 << 20) + b'"]}', 413, "body_too_large"),
        ("POST", "/v1/lookup", b'{"queries": [', 400, "bad_json"),
        ("POST", "/v1/lookup", b"\xff\xfe", 400, "bad_json"),
        ("POST", "/v1/lookup", {"q": "x"}, 422, "missing_queries"),
        ("POST", "/v1/lookup", ["x"], 422, "missing_queries"),
        ("POST", "/v1/lookup", {"queries": ["x", 3]}, 422, "not_a_string"),
        ("POST", "/v1/lookup", {"queries": [None]}, 422, "not_a_string"),
        ("GET", "/v1/lookup", None, 422, "missing_q"),
        ("GET", "/v1/lookup?q=a&q=b", None, 422, "several_q"),
        ("GET", "/v1/lookup?q=%FF%FE", None, 400, "bad_query_string"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("DELETE", "/v1/lookup", None, 405, "method_not_allowed"),
    ],
)
def test_bad_input_is_a_4xx_with_a_json_reason(served_v1, method, path, body, status, code):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    response = served_v1.request(method, path, **kw)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert served_v1.get("/v1/lookup?q=covid+vaccine").status_code == 200, "the server still answers"


def test_a_publish_under_load_switches_versions_without_a_failed_request(tmp_path):
    write_version(tmp_path, "v1", V1)
    write_version(tmp_path, "v2", V2, publish=False)  # written and stored, as the job leaves it just before publishing
    # A version CURRENT may name that cannot be opened: the service must keep the one it has.
    (tmp_path / "versions" / "broken").mkdir()
    failures: list[str] = []
    seen: list[list[str]] = [[] for _ in range(4)]
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=server.url) as http:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    if i % 5:
                        response = http.get("/v1/lookup", params={"q": f"QUERY {i % 200}"})
                        versions = [response.json()["version"]] if response.status_code == 200 else []
                        expected = f"{response.headers.get('x-bulkinfer-version')} {i % 200}"
                        if response.status_code == 200 and response.json()["synonyms"] != [expected]:
                            failures.append(f"mixed answer {response.json()} from version {expected}")
                    else:
                        response = http.post("/v1/lookup", json={"queries": [f"query {j}" for j in range(50)]})
                        versions = [r["version"] for r in response.json()["results"]] if response.status_code == 200 else []
                        if len(set(versions)) > 1:
                            failures.append(f"one batch answered by {set(versions)}")
                except httpx.HTTPError as e:
                    failures.append(f"{type(e).__name__}: {e}")
                    continue
                if response.status_code != 200:
                    failures.append(f"HTTP {response.status_code}: {response.text}")
                seen[n].extend(versions[:1])

    with _serve(tmp_path) as server:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        layout.publish(str(tmp_path), "broken")
        time.sleep(0.5)
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["version"] == "v1" and "version broken" in health["last_reload_error"]
        layout.publish(str(tmp_path), "v2")
        time.sleep(0.8)
        stop.set()
        for t in threads:
            t.join()
        health = httpx.get(f"{server.url}/healthz").json()
        metrics = httpx.get(f"{server.url}/metrics").text

    assert failures == []
    assert all(s for s in seen), "every client got answers"
    for versions in seen:
        switched = versions.index("v2")
        assert set(versions[:switched]) == {"v1"} and set(versions[switched:]) == {"v2"}, "a client saw v1 again after v2"
    assert health["version"] == "v2" and health["last_reload_error"] is None
    assert 'bulkinfer_table_reloads_total{result="error"} 1.0' in metrics and 'bulkinfer_table_reloads_total{result="ok"} 1.0' in metrics
    version_info = [line for line in metrics.splitlines() if line.startswith("bulkinfer_table_version_info")]
    assert version_info == ['bulkinfer_table_version_info{version="v2"} 1.0']


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"port": 70000}, r"port must be in \[0, 65535\], got 70000"),
        ({"max_batch": 0}, r"max_batch must be in \[1, 100000\], got 0"),
        ({"max_query_chars": 0}, r"max_query_chars must be in"),
        ({"reload_interval_s": 0}, r"reload_interval_s must be > 0, got 0"),
    ],
)
def test_config_errors_name_the_field(kw, match):
    with pytest.raises(ConfigError, match=match):
        ServeConfig(table="t", **kw)


def test_cli_serve(tmp_path):
    write_version(tmp_path / "table", "v1", V1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "bulkinfer.cli", "serve", "--table"]
    refused = subprocess.run([*command, str(tmp_path / "empty")], capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "has no published version" in refused.stderr and "Traceback" not in refused.stderr
    port = free_port()
    server = subprocess.Popen(
        [*command, str(tmp_path / "table"), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/lookup", params={"q": "Covid Vaccine"})
                break
            except httpx.ConnectError:
                assert server.poll() is None and time.monotonic() < deadline, "bulkinfer serve did not come up"
                time.sleep(0.2)
        assert response.json()["synonyms"] == ["covid jab"]
    finally:
        server.terminate()
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it so the exit status tells why.
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
