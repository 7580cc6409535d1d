"""Engines, installed as ``bulkinfer.models``: ModelHandlers and engine configuration.

``vllm_handler`` (Beam's ModelHandler contract over an in-process vLLM engine),
``engine`` (engine config, model resolution, adapters, digests), ``gemma`` (the
default model, converted from its PyPI GGUF once), ``tiny`` and ``w1`` (local test
and benchmark models). Engines know no stage or job: they may import
:mod:`bulkinfer.format.records`, :mod:`bulkinfer.tasks` and :mod:`bulkinfer.errors`.
vLLM, torch and transformers are imported here only, inside the functions that
need them where they are optional.
"""
