"""Redis export against a real redis-server: key layout, the pointer flip, grace expiry, the reader."""

import json
import os
import subprocess
import sys

import orjson
import pytest

from bulkinfer.errors import ConfigError, TableError
from bulkinfer.lookup.redis_export import RedisExportConfig, RedisTable, connect, export_version
from bulkinfer.testing import free_port
from tests.conftest import write_version

V1 = {"covid vaccine": ["covid jab"], "cheap flights": ["budget airlines", "low cost flights"], "a:b *": ["odd key"]}
V2 = {"covid vaccine": ["coronavirus vaccine"], "used cars": ["second hand cars"]}


@pytest.fixture
def client(redis_url):
    return connect(redis_url)


def _config(redis_url, name, **kw):
    return RedisExportConfig(url=redis_url, name=name, **kw)


def _row(synonyms, version, key):
    return {"synonyms": synonyms, "model": "fake-model", "run_id": version, "key": key, "version": version}


def test_export_writes_the_documented_layout(tmp_path, redis_url, client):
    write_version(tmp_path, "v1", V1)
    summary = export_version(str(tmp_path), _config(redis_url, "layout", batch_keys=2))
    assert summary["version"] == "v1" and summary["keys"] == 3 and summary["previous"] is None and summary["expiring"] == []
    # What a reader in any language does: GET the pointer, then GET the key.
    assert client.get("bulkinfer:layout:current") == b"v1"
    value = client.get("bulkinfer:layout:v1:k:cheap flights")
    assert json.loads(value) == {"synonyms": ["budget airlines", "low cost flights"], "model": "fake-model", "run_id": "v1"}
    assert json.loads(client.get("bulkinfer:layout:v1:k:a:b *"))["synonyms"] == ["odd key"]
    meta = {k.decode(): v.decode() for k, v in client.hgetall("bulkinfer:layout:v1:meta").items()}
    assert meta["version"] == "v1" and meta["output_column"] == "synonyms" and meta["output_kind"] == "list" and meta["keys"] == "3"
    assert client.ttl("bulkinfer:layout:v1:k:cheap flights") == -1, "the current version never expires"


def test_reader_normalises_like_the_job(tmp_path, redis_url):
    write_version(tmp_path, "v1", V1)
    export_version(str(tmp_path), _config(redis_url, "reader"))
    table = RedisTable(redis_url, "reader")
    assert table.get("  ＣＨＥＡＰ   Flights ") == _row(["budget airlines", "low cost flights"], "v1", "cheap flights")
    assert [r and r["key"] for r in table.get_many(["nope", "COVID VACCINE"])] == [None, "covid vaccine"]
    assert table.get_many([]) == []
    with pytest.raises(TableError, match=r"has no bulkinfer:never:current; run `bulkinfer export redis` first"):
        RedisTable(redis_url, "never").get("x")


def test_a_new_export_flips_the_pointer_and_old_keys_expire_after_the_grace(tmp_path, redis_url, client):
    write_version(tmp_path, "v1", V1)
    export_version(str(tmp_path), _config(redis_url, "flip"))
    reader = RedisTable(redis_url, "flip", pointer_ttl_s=0)
    assert reader.get("covid vaccine")["synonyms"] == ["covid jab"]
    write_version(tmp_path, "v2", V2)
    summary = export_version(str(tmp_path), _config(redis_url, "flip", grace_seconds=120))
    assert summary["previous"] == "v1" and summary["expiring"] == ["v1"]
    assert reader.get("covid vaccine") == _row(["coronavirus vaccine"], "v2", "covid vaccine")
    assert reader.get("cheap flights") is None, "no mix of versions: v1's keys are not read through v2's pointer"
    # A reader that read the old pointer still finds its keys, for the grace period.
    assert client.get("bulkinfer:flip:v1:k:cheap flights") is not None
    assert 0 < client.ttl("bulkinfer:flip:v1:k:cheap flights") <= 120
    assert 0 < client.ttl("bulkinfer:flip:v1:meta") <= 120
    assert client.ttl("bulkinfer:flip:v2:k:used cars") == -1
    assert client.smembers("bulkinfer:flip:namespaces") == {b"v2"}


def test_rolling_back_to_an_expiring_version_makes_it_permanent_again(tmp_path, redis_url, client):
    write_version(tmp_path, "v1", V1)
    write_version(tmp_path, "v2", V2)
    config = _config(redis_url, "back", grace_seconds=300)
    export_version(str(tmp_path), config, version="v1")
    export_version(str(tmp_path), config, version="v2")
    assert client.ttl("bulkinfer:back:v1:k:covid vaccine") > 0
    summary = export_version(str(tmp_path), config, version="v1")
    assert summary["previous"] == "v2" and summary["expiring"] == ["v2"]
    assert client.ttl("bulkinfer:back:v1:k:covid vaccine") == -1 and client.ttl("bulkinfer:back:v1:meta") == -1
    assert client.ttl("bulkinfer:back:v2:k:used cars") > 0


def test_an_export_that_died_half_way_is_expired_by_the_next(tmp_path, redis_url, client):
    write_version(tmp_path, "v1", V1)
    # What a crash mid-export leaves: the namespace registered, some keys, no pointer to it.
    client.sadd("bulkinfer:crash:namespaces", "dead")
    client.set("bulkinfer:crash:dead:k:covid vaccine", orjson.dumps({"synonyms": ["half"]}))
    summary = export_version(str(tmp_path), _config(redis_url, "crash", grace_seconds=60))
    assert summary["expiring"] == ["dead"] and 0 < client.ttl("bulkinfer:crash:dead:k:covid vaccine") <= 60
    assert client.get("bulkinfer:crash:current") == b"v1"


def test_cli_export_redis(tmp_path, redis_url, client):
    write_version(tmp_path / "synonyms", "v1", V1)
    done = _cli("export", "redis", "--table", str(tmp_path / "synonyms"), "--url", redis_url)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["name"] == "synonyms" and summary["keys"] == 3 and summary["keys_per_second"] > 0
    assert client.get("bulkinfer:synonyms:current") == b"v1"
    refused = _cli("export", "redis", "--table", str(tmp_path / "synonyms"), "--url", f"redis://:secret@127.0.0.1:{free_port()}/0")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "bulkinfer: error: --url redis://:***@127.0.0.1:" in refused.stderr and "cannot reach Redis" in refused.stderr
    assert "secret" not in refused.stderr


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"url": "http://x"}, r"url must start with redis://"),
        ({"name": "a/b"}, r"name must be letters, digits.*got 'a/b'"),
        ({"grace_seconds": 0}, r"grace_seconds must be >= 1, got 0"),
        ({"batch_keys": 0}, r"batch_keys must be in \[1, 1000000\], got 0"),
    ],
)
def test_config_errors_name_the_field(kw, match):
    with pytest.raises(ConfigError, match=match):
        RedisExportConfig(**{"url": "redis://127.0.0.1:6379/0", "name": "t", **kw})


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "bulkinfer.cli", *args], capture_output=True, text=True, timeout=120, env=env)
