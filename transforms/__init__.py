"""Pipeline stages, installed as ``bulkinfer.transforms``: one composite Beam PTransform per file.

Each is named as a verb phrase (``ReadQueries``, ``NormalizeKeys``, ``BuildPrompts``,
``Generate``, ``ParsePredictions``, ``WriteVersion``, ...) and its ``expand()`` is a
few labelled steps. Stages know no job: they take what they need through their
constructor, and may import :mod:`bulkinfer.tasks`, :mod:`bulkinfer.format` and
:mod:`bulkinfer.keys`. ``Generate`` takes any Beam ``ModelHandler``; no stage
imports vLLM.
"""
