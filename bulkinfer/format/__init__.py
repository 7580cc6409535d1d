"""The prediction table on storage, and how a version gets published.

``fs`` (local paths with the standard library, ``gs://``/``s3://`` through Beam's
filesystems imported on use), ``layout`` (versions, ``CURRENT``, manifests,
shards), ``records`` (row types and Arrow schemas), ``lock`` (one run per table),
``manifest`` (row accounting), ``quality`` (the measures behind the gates) and
``publish`` (gate check, store build, ``CURRENT`` swap, pruning). It may import
:mod:`bulkinfer.tasks`, :mod:`bulkinfer.keys` and :mod:`bulkinfer.errors`;
``publish`` also builds the lookup store. It knows no job, stage or engine:
``layout`` and ``fs`` are read by the lookup side and must stay free of Beam and
pyarrow at import.
"""
