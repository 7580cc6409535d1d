"""The lookup side stays light: no Beam, vLLM, torch, grpc (or pyarrow) behind an open_table, the service or the CLI.

Each check runs in a fresh interpreter started outside the repository, so what it
sees is the installed package and nothing a test imported before.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("apache_beam", "vllm", "torch", "grpc", "pyarrow")

PROBE = """
import json, sys
{statement}
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({heavy!r}))
print(json.dumps(heavy))
"""


def _heavy_after(statement: str, cwd) -> tuple[list[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(statement=statement, heavy=HEAVY)], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize(
    "statement",
    [
        "from bulkinfer import open_table",
        "from bulkinfer.lookup.serve import ServeConfig, serve",
        "from bulkinfer.lookup.redis_export import export_version",
        "from bulkinfer.lookup.match import MatchIndex, open_match_index",
        "import bulkinfer.cli",
    ],
)
def test_the_lookup_side_imports_none_of_the_job_stack(statement, tmp_path):
    heavy, stderr = _heavy_after(statement, tmp_path)
    assert heavy == []
    assert stderr == "", "importing the lookup side prints nothing (Beam's 'apitools not found' warning came with Beam)"


def test_the_probe_sees_a_heavy_import(tmp_path):
    # The probe itself must be able to fail: the job does load Beam.
    heavy, _ = _heavy_after("import bulkinfer.pipelines.cache_job", tmp_path)
    assert "apache_beam" in heavy


def test_one_namespace_outside_the_repo(tmp_path):
    probe = (
        "import importlib, json\n"
        "found = {}\n"
        "for name in ('models', 'pipelines', 'transforms', 'tasks', 'bulkinfer.models', 'bulkinfer.pipelines',\n"
        "             'bulkinfer.transforms', 'bulkinfer.tasks'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        found[name] = True\n"
        "    except ImportError:\n"
        "        found[name] = False\n"
        "print(json.dumps(found))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {
        "models": False,
        "pipelines": False,
        "transforms": False,
        "tasks": False,
        "bulkinfer.models": True,
        "bulkinfer.pipelines": True,
        "bulkinfer.transforms": True,
        "bulkinfer.tasks": True,
    }


def test_builtin_tasks_load_next_to_a_users_own_tasks_module(tmp_path):
    # The invoke/celery convention: a tasks.py in the working directory.
    (tmp_path / "tasks.py").write_text("RAN = True\n")
    (tmp_path / "models.py").write_text("RAN = True\n")
    probe = "from bulkinfer.tasks.spec import load_task; print(load_task('synonyms').name)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "synonyms"
