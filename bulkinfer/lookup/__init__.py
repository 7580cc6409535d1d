"""The live lookup side: what cache consumers import.

The embedded store (``store``), the match index (``match``: which concepts a live
query is about), the table API (``table``: :func:`open_table`), the HTTP service
(``serve``) and the Redis export (``redis_export``). It reads
published versions through :mod:`bulkinfer.format.layout` and normalises queries
with :mod:`bulkinfer.keys`, and may import only those, :mod:`bulkinfer.errors`
and light libraries (sqlite3, orjson, marisa-trie; uvicorn, prometheus_client and redis in the
modules that serve or export). Never Apache Beam, vLLM, torch or grpc, and pyarrow
only inside the functions that build a store from Parquet: a test checks it in a
fresh interpreter.
"""
