"""Beam's RunInference contract (``ModelHandler``, ``RunInference``), imported without loading torch for nothing.

Beam 2.77's ``apache_beam.ml.inference.base`` imports its memory-aware model manager
(``apache_beam.ml.inference.model_manager``, which imports torch, then scipy) inside a
``try``. Where scipy is not installed that import always fails, after torch has been
imported (1.3-2 s of every job process's start, and torch's memory), and Beam goes on
without the manager and without the ``resource`` module (so each run logs "Resource
module is not available ... memory usage cannot be fetched"). The job never uses the
manager (``RunInference(..., use_model_manager=False)``, Beam's default). So where
scipy is missing, this module registers a stand-in for ``model_manager`` holding what
Beam falls back to (``ModelManager = None``) before Beam's module is imported: the
outcome is the one Beam reaches by itself, minus the torch import and with ``resource``.
Where scipy is installed, nothing is changed. Every bulkinfer module imports the
contract from here. A vLLM engine still imports torch, when it starts.
"""

from __future__ import annotations

import importlib.util
import sys
import types

_MANAGER = "apache_beam.ml.inference.model_manager"

if _MANAGER not in sys.modules and "apache_beam.ml.inference.base" not in sys.modules and importlib.util.find_spec("scipy") is None:
    _stand_in = types.ModuleType(_MANAGER, "Stand-in registered by bulkinfer.models.beam_inference: scipy is not installed.")
    _stand_in.ModelManager = None  # type: ignore[attr-defined]  # what Beam sets when its own import fails
    sys.modules[_MANAGER] = _stand_in

from apache_beam.ml.inference.base import ModelHandler, RunInference  # noqa: E402

__all__ = ["ModelHandler", "RunInference"]
