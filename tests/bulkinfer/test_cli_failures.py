"""Operational failures on the command line: exit 1, one line naming what failed and the log file, no traceback, no debris.

The full-disk cases run on a real, tiny tmpfs (they need the right to mount one:
root, as in CI's container; elsewhere they skip).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bulkinfer.cli import main as cli_main
from bulkinfer.format import layout
from tests.conftest import write_corpus, write_version

ROOT = Path(__file__).resolve().parents[2]
V1 = {"covid vaccine": ["covid jab"], **{f"query {i}": [f"v1 {i}"] for i in range(50)}}
V2 = {"covid vaccine": ["coronavirus vaccine"], **{f"query {i}": [f"v2 {i}"] for i in range(50)}}

# `bulkinfer run` exactly as a scheduler starts it, with the fake handler standing in for the engine.
CLI_WITH_FAKE_ENGINE = """
import functools, sys
from bulkinfer import cli
from bulkinfer.pipelines import cache_job
from tests.fakes import FakeHandler

cache_job.run = functools.partial(cache_job.run, model_handler=FakeHandler())
sys.exit(cli.main(sys.argv[1:]))
"""


def _one_line_with_log(stderr: str, what: str) -> Path:
    # The job logs its progress before it fails; what bulkinfer itself says is one line starting "bulkinfer:".
    lines = [line for line in stderr.strip().splitlines() if line.startswith("bulkinfer:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert what in lines[0], lines[0]
    found = re.search(r"details in (\S+\.log)$", lines[0])
    assert found, lines[0]
    log = Path(found.group(1))
    assert "Traceback" in log.read_text(), "the log holds the details"
    return log


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _fill(disk: Path, leave_bytes: int) -> None:
    """Fills the disk until about ``leave_bytes`` are free."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave_bytes))


def test_rollback_on_a_full_disk_exits_1_and_leaves_no_empty_lock(small_disk, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("BULKINFER_CACHE", str(tmp_path / "cache"))
    table = small_disk / "table"
    write_version(table, "v1", V1)
    write_version(table, "v2", V2)
    _fill(small_disk, 0)
    assert cli_main(["rollback", "--table", str(table), "--to", "v1"]) == 1
    _one_line_with_log(capsys.readouterr().err, "No space left on device")
    assert not (table / "LOCK").exists(), "an empty LOCK was left behind"
    assert sorted(p.name for p in table.iterdir()) == ["CURRENT", "versions"]
    assert layout.read_current(str(table)) == "v2"


def test_run_on_a_full_disk_exits_1_in_one_line_and_keeps_the_table(small_disk, tmp_path):
    table = small_disk / "table"
    write_version(table, "v1", V1, store=False)
    corpus = write_corpus(tmp_path / "corpus.parquet", [f"query {i} {uuid.uuid4().hex}" for i in range(3000)])
    _fill(small_disk, 64 << 10)  # room to start, not to write the version
    argv = ["run", "--task", "synonyms", "--input", str(corpus), "--output", str(table), "--model", "fake", "--run_id", "r2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BULKINFER_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", CLI_WITH_FAKE_ENGINE, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    log = _one_line_with_log(done.stderr, "No space left on device")
    assert log.parent == tmp_path / "cache" / "logs"
    assert layout.read_current(str(table)) == "v1"
    assert not list(table.glob(".write-probe-*")) and not (table / "LOCK").exists()


def test_redis_without_write_permission_exits_1_in_one_line(tmp_path, redis_url, capsys, monkeypatch):
    monkeypatch.setenv("BULKINFER_CACHE", str(tmp_path / "cache"))
    from bulkinfer.lookup.redis_export import connect

    admin = connect(redis_url)
    admin.execute_command("ACL", "SETUSER", "reader", "on", ">secret", "~*", "+@read", "+ping")
    write_version(tmp_path / "table", "v1", V1)
    url = redis_url.replace("redis://", "redis://reader:secret@")
    assert cli_main(["export", "redis", "--table", str(tmp_path / "table"), "--url", url]) == 1
    log = _one_line_with_log(capsys.readouterr().err, "NoPermissionError: this user has no permissions to run the 'sadd' command")
    assert log.parent == tmp_path / "cache" / "logs"


def test_a_model_that_needs_its_own_code_is_refused_before_the_engine_starts(tmp_path, capsys):
    model = tmp_path / "custom-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "mymodel", "auto_map": {"AutoModelForCausalLM": "modeling_my.MyModel"}}')
    corpus = write_corpus(tmp_path / "corpus.parquet", ["covid vaccine"])
    argv = ["run", "--task", "synonyms", "--input", str(corpus), "--output", str(tmp_path / "table"), "--model", str(model)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "bulkinfer never runs code shipped with a model" in err and "Traceback" not in err
    assert not (tmp_path / "table" / "versions").exists()
