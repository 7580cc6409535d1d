"""The RunInference contract imports without torch where Beam's model manager cannot import anyway."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
import bulkinfer.pipelines.cache_job
from apache_beam.ml.inference import base
print(json.dumps({"torch": "torch" in sys.modules, "resource": base.resource is not None, "manager": base.ModelManager is not None}))
"""


@pytest.mark.skipif(importlib.util.find_spec("scipy") is not None, reason="scipy is installed: Beam's model manager imports for real")
def test_the_job_imports_without_torch_and_beam_keeps_its_resource_module():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"torch": False, "resource": True, "manager": False}
    assert "Resource module is not available" not in done.stderr


def test_beams_contract_is_the_one_the_job_uses():
    from apache_beam.ml.inference import base

    from bulkinfer.models.beam_inference import ModelHandler, RunInference

    assert ModelHandler is base.ModelHandler and RunInference is base.RunInference
