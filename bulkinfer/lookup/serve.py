"""The HTTP lookup service: ``bulkinfer serve --table DIR``.

Endpoints::

    GET  /v1/lookup?q=...        one query -> {"query", "key", "found", <output>, "version", "model", "run_id"}
    POST /v1/lookup              {"queries": [...]} -> {"version": ..., "results": [...]} (one version for the batch)
    GET  /v1/match?q=...[&exact=true]   one query -> {"query", "key", "matches": [{"concept", "item", "language", ...}], "version"}
    POST /v1/match               {"queries": [...], "exact": false} -> {"version": ..., "results": [...]}
    GET  /healthz                table, version, keys, last reload and its error
    GET  /metrics                Prometheus text: requests by route and status, latency, hits/misses, version
    GET  /openapi.json, /docs    the API description (Swagger UI)

Every lookup response carries the version that answered, in the body and in the
``X-Bulkinfer-Version`` header. A background task polls ``CURRENT``; a new version
is opened off the event loop and swapped in with one assignment, so no request
sees a gap or a mix of versions, and the old store is closed after a grace period.
Oversized or malformed input is answered with 4xx and a JSON error body, never 5xx.

The app is a plain ASGI callable on uvicorn (httptools, uvloop): FastAPI serving the
same lookup on one worker did 3,039 requests/s against this app's 5,332 (medians of
3, bench/RESULTS.md), and each request is only a microsecond-scale store read, so
the framework's per-request cost is most of the cost.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import orjson

from bulkinfer.errors import ConfigError, TableError
from bulkinfer.format import layout
from bulkinfer.lookup.table import PredictionTable, open_table

_LOG = logging.getLogger(__name__)
_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True)
class ServeConfig:
    """Where the service listens, which table it serves, and what it accepts."""

    table: str
    """The table directory (the job's ``--output``); local, ``gs://`` or ``s3://``."""
    host: str = "127.0.0.1"
    """Interface to bind; the loopback by default, so nothing is exposed unless asked."""
    port: int = 8000
    """TCP port."""
    max_query_chars: int = 1024
    """Longest query accepted, in characters; longer ones get 413."""
    max_batch: int = 1000
    """Most queries in one POST; more get 413."""
    max_body_bytes: int = 1 << 20
    """Largest POST body; larger ones get 413 before they are read whole."""
    reload_interval_s: float = 1.0
    """Seconds between checks of ``CURRENT`` for a newly published version."""
    close_grace_s: float = 30.0
    """Seconds a replaced version's store stays open after the swap."""
    cache_dir: str | None = None
    """Where stores of versions without one (or of remote tables) are built; default ``~/.cache/bulkinfer/stores``."""
    access_log: bool = False
    """Log every request (uvicorn's access log); off by default, it costs throughput."""
    request_timeout_s: float = 10.0
    """Seconds a request may take to arrive whole; a connection holding a partial request longer is answered 408 and closed."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        for name, low, high in (("max_query_chars", 1, 1 << 20), ("max_batch", 1, 100_000), ("max_body_bytes", 1024, 1 << 30)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")
        if self.reload_interval_s <= 0:
            raise ConfigError(f"reload_interval_s must be > 0, got {self.reload_interval_s}")
        if not 0 < self.request_timeout_s <= 3600:
            raise ConfigError(f"request_timeout_s must be in (0, 3600], got {self.request_timeout_s}")
        if self.close_grace_s < 0:
            raise ConfigError(f"close_grace_s must be >= 0, got {self.close_grace_s}")


_INLINE_CHARS = 16_384
"""POST batches with more query characters than this are answered off the event loop."""


class _UserError(Exception):
    """A request the client must fix: answered with ``status`` and a JSON error body."""

    def __init__(self, status: int, code: str, message: str, **detail: Any):
        super().__init__(message)
        self.status = status
        self.body = orjson.dumps({"error": {"code": code, "message": message, **detail}})


class _Metrics:
    """The service's Prometheus metrics, in a registry of its own (several apps may share a process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("bulkinfer_http_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry)
        self.latency = Histogram(
            "bulkinfer_http_request_duration_seconds",
            "Time from request to response body, by route",
            ["route"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.lookups = Counter("bulkinfer_lookups", "Queries looked up, by result", ["result"], registry=self.registry)
        self.hits = self.lookups.labels("hit")
        self.misses = self.lookups.labels("miss")
        self.version = Gauge("bulkinfer_table_version_info", "1 for the version being served", ["version"], registry=self.registry)
        self.keys = Gauge("bulkinfer_table_keys", "Keys in the version being served", registry=self.registry)
        self.reloads = Counter("bulkinfer_table_reloads", "Checks that found a new version, by result", ["result"], registry=self.registry)
        self._children: dict[tuple[str, int], Any] = {}
        self._latency: dict[str, Any] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        child = self._children.get((route, status))
        if child is None:  # label lookups cost more than the increment; keep the children
            child = self._children[(route, status)] = self.requests.labels(route, str(status))
        child.inc()
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = self.latency.labels(route)
        latency.observe(seconds)

    def serving(self, old: PredictionTable | None, new: PredictionTable) -> None:
        if old is not None:
            self.version.remove(old.version)
        self.version.labels(new.version).set(1)
        self.keys.set(len(new))


class LookupApp:
    """The ASGI application: serves the published version of one table and follows ``CURRENT``.

    Constructing it opens nothing; the table is opened by :meth:`load` (called at
    ASGI lifespan startup, or by the caller first).
    """

    def __init__(self, config: ServeConfig):
        """Args:
        config: the table and the limits.
        """
        self.config = config
        """What is served and how."""
        self.table: PredictionTable | None = None
        """The version being served; replaced, never mutated, when a new one is published."""
        self.loaded_at: float | None = None
        """When the served version was swapped in (Unix time)."""
        self.last_error: str | None = None
        """Why the latest new version could not be opened, if it could not."""
        self.metrics = _Metrics()
        """Prometheus metrics of this app."""
        self._failed_version: str | None = None
        self._rebuilding: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._routes = {
            ("GET", "/v1/lookup"): self._get_lookup,
            ("POST", "/v1/lookup"): self._post_lookup,
            ("GET", "/v1/match"): self._get_match,
            ("POST", "/v1/match"): self._post_match,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/openapi.json"): self._openapi,
            ("GET", "/docs"): self._docs,
        }
        self._paths = {path for _, path in self._routes}

    def load(self) -> None:
        """Opens the published version (blocking).

        Raises:
            TableError: nothing is published, or the version cannot be read.
        """
        self._swap(_open_for_serving(self.config.table, None, self.config.cache_dir))

    async def check_for_new_version(self) -> bool:
        """Swaps in the published version if ``CURRENT`` names another one; returns whether it did.

        The new store is opened in a worker thread (building it can take seconds for
        a version without one); requests keep being answered by the old one meanwhile.
        """
        try:
            current = await asyncio.to_thread(layout.read_current, self.config.table)
        except TableError as e:  # a damaged CURRENT: keep serving, say so on /healthz, log it once
            if self.last_error != str(e):
                self.last_error = str(e)
                self.metrics.reloads.labels("error").inc()
                _LOG.error("keeping version %s: %s", self.table and self.table.version, e)
            return False
        if self.last_error is not None and self._failed_version is None and self._rebuilding is None:
            self.last_error = None  # CURRENT was repaired to the version being served
        if current is None or (self.table is not None and current == self.table.version) or current == self._failed_version:
            return False
        try:
            table = await asyncio.to_thread(_open_for_serving, self.config.table, current, self.config.cache_dir)
        except Exception as e:  # any failure keeps the old version serving; the reason goes to /healthz and the log
            self._failed_version = current
            self.last_error = f"version {current}: {e}"
            self.metrics.reloads.labels("error").inc()
            _LOG.error("keeping version %s: cannot open %s: %s", self.table and self.table.version, current, e)
            return False
        self._swap(table)
        self.metrics.reloads.labels("ok").inc()
        return True

    def _swap(self, table: PredictionTable) -> None:
        old, self.table = self.table, table
        self.loaded_at = time.time()
        self.last_error = None
        self._failed_version = None
        self.metrics.serving(old, table)
        if old is not None:
            _LOG.info("serving version %s of %s (was %s)", table.version, self.config.table, old.version)
            # A handler reads self.table once and finishes without awaiting, so no request
            # still holds the old table; the grace period covers callers in other threads.
            try:
                asyncio.get_running_loop().call_later(self.config.close_grace_s, old.close)
            except RuntimeError:
                old.close()

    def _store_damaged(self, error: sqlite3.DatabaseError) -> None:
        """Starts one rebuild of the served version's store from its Parquet shards (reopening checks the file whole)."""
        if self._rebuilding is not None or self.table is None:
            return
        version = self.table.version
        store = self.table.store.path
        self.last_error = f"version {version}: the store {store} is damaged ({error}); rebuilding it from the Parquet shards"
        _LOG.error("%s", self.last_error)
        self._rebuilding = asyncio.get_running_loop().create_task(self._rebuild(version))

    async def _rebuild(self, version: str) -> None:
        try:
            table = await asyncio.to_thread(open_table, self.config.table, version, self.config.cache_dir)
        except Exception as e:  # reported on /healthz; lookups keep failing with 503 until a new version is published
            self.last_error = f"version {version}: the store is damaged and could not be rebuilt: {e}"
            _LOG.error("%s", self.last_error)
            return
        finally:
            self._rebuilding = None
        if self.table is not None and self.table.version == version:
            self._swap(table)
            _LOG.info("serving version %s from a rebuilt store %s", version, table.store.path)
        else:
            table.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            try:
                await self.check_for_new_version()
            except Exception:  # reading CURRENT failed (e.g. a network blip): try again next time
                _LOG.exception("checking %s for a new version failed", self.config.table)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.table is None:
                        await asyncio.to_thread(self.load)
                except Exception as e:  # reported through the lifespan protocol; uvicorn exits
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                self._poller = asyncio.create_task(self._poll())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._poller is not None:
                    self._poller.cancel()
                if self.table is not None:
                    self.table.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        path = scope["path"]
        handler = self._routes.get((scope["method"], path))
        headers: list[tuple[bytes, bytes]] = [_JSON]
        try:
            if handler is None:
                if path in self._paths:
                    raise _UserError(405, "method_not_allowed", f"{scope['method']} is not allowed on {path}")
                raise _UserError(404, "not_found", f"no such endpoint: {path}; see /docs")
            status, body, headers = await handler(scope, receive)
        except _UserError as e:
            status, body = e.status, e.body
        except sqlite3.DatabaseError as e:  # the store file was damaged in place after it was opened
            self._store_damaged(e)
            message = "the lookup store is damaged and being rebuilt; retry shortly"
            status, body = 503, orjson.dumps({"error": {"code": "store_damaged", "message": message}})
            headers = [*headers, (b"retry-after", b"5")]
        except Exception:  # a bug of ours, not the client's input
            _LOG.exception("error answering %s %s", scope["method"], path)
            status, body = 500, orjson.dumps({"error": {"code": "internal", "message": "internal error; see the server log"}})
        await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe(path if handler is not None else "other", status, time.perf_counter() - started)

    def _serving(self) -> PredictionTable:
        if self.table is None:
            raise _UserError(503, "not_ready", "no version loaded yet")
        return self.table

    def _check_query(self, query: Any, where: str) -> str:
        if not isinstance(query, str):
            raise _UserError(422, "not_a_string", f"{where} must be a string, got {type(query).__name__}")
        limit = self.config.max_query_chars
        # Measured after NFKC too: some characters expand 18-fold (U+FDFA), and the key normaliser works on the expansion.
        length = len(query) if len(query) > limit else len(unicodedata.normalize("NFKC", query))
        if length > limit:
            message = f"{where} has {length} characters (after NFKC); at most {limit}"
            raise _UserError(413, "query_too_long", message, limit=limit, got=length)
        return query

    def _count(self, answers: list[dict[str, Any]]) -> None:
        hits = sum(1 for a in answers if a["found"])
        if hits:
            self.metrics.hits.inc(hits)
        if len(answers) - hits:
            self.metrics.misses.inc(len(answers) - hits)

    def _query_params(self, scope: dict[str, Any], route: str) -> tuple[str, dict[str, list[str]]]:
        raw = scope["query_string"]
        try:
            if raw.startswith(b"q=") and b"&" not in raw:  # the usual request: skip parse_qs, a quarter of the app's time
                params = {"q": [unquote_plus(raw[2:].decode("ascii"), errors="strict")]}
            else:
                params = parse_qs(raw.decode("ascii"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError as e:
            raise _UserError(400, "bad_query_string", f"the query string is not percent-encoded UTF-8: {e}") from e
        values = params.get("q")
        if not values:
            raise _UserError(422, "missing_q", f"give the query as ?q=...; POST {route} takes a batch")
        if len(values) > 1:
            raise _UserError(422, "several_q", f"give one q, got {len(values)}; POST {route} takes a batch")
        return self._check_query(values[0], "q"), params

    async def _get_lookup(self, scope: dict[str, Any], receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        query, _ = self._query_params(scope, "/v1/lookup")
        table = self._serving()
        answer = table.answer(query)
        (self.metrics.hits if answer["found"] else self.metrics.misses).inc()
        return 200, orjson.dumps(answer), [_JSON, (b"x-bulkinfer-version", table.version.encode())]

    async def _post_lookup(self, scope: dict[str, Any], receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        body = await self._read_body(scope, receive)
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise _UserError(400, "bad_json", f"the body is not JSON: {e}") from e
        queries = request.get("queries") if isinstance(request, dict) else None
        if not isinstance(queries, list):
            raise _UserError(422, "missing_queries", 'the body must be a JSON object {"queries": ["...", ...]}')
        if len(queries) > self.config.max_batch:
            limit = self.config.max_batch
            message = f"{len(queries)} queries in one request; at most {limit}"
            raise _UserError(413, "batch_too_large", message, limit=limit, got=len(queries))
        for i, query in enumerate(queries):
            self._check_query(query, f"queries[{i}]")
        table = self._serving()
        if sum(map(len, queries)) > _INLINE_CHARS:
            # A big batch of non-ASCII keys takes the normaliser a few hundred ms (bench/http_expanding_queries.py):
            # answered in a worker thread, so the event loop keeps serving other requests meanwhile.
            answers = await asyncio.to_thread(table.answer_many, queries)
        else:
            answers = table.answer_many(queries)
        self._count(answers)
        body = orjson.dumps({"version": table.version, "results": answers})
        return 200, body, [_JSON, (b"x-bulkinfer-version", table.version.encode())]

    async def _get_match(self, scope: dict[str, Any], receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        query, params = self._query_params(scope, "/v1/match")
        exact = _flag(params.get("exact", ["false"])[-1], "exact")
        table = self._matching()
        return 200, orjson.dumps(table.match(query, exact=exact)), [_JSON, (b"x-bulkinfer-version", table.version.encode())]

    async def _post_match(self, scope: dict[str, Any], receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        body = await self._read_body(scope, receive)
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise _UserError(400, "bad_json", f"the body is not JSON: {e}") from e
        queries = request.get("queries") if isinstance(request, dict) else None
        if not isinstance(queries, list):
            raise _UserError(422, "missing_queries", 'the body must be a JSON object {"queries": ["...", ...], "exact": false}')
        exact = request.get("exact", False)
        if not isinstance(exact, bool):
            raise _UserError(422, "bad_exact", f"exact must be true or false, got {exact!r}")
        if len(queries) > self.config.max_batch:
            limit = self.config.max_batch
            raise _UserError(
                413, "batch_too_large", f"{len(queries)} queries in one request; at most {limit}", limit=limit, got=len(queries)
            )
        for i, query in enumerate(queries):
            self._check_query(query, f"queries[{i}]")
        table = self._matching()
        body = orjson.dumps({"version": table.version, "results": table.match_many(queries, exact=exact)})
        return 200, body, [_JSON, (b"x-bulkinfer-version", table.version.encode())]

    def _matching(self) -> PredictionTable:
        table = self._serving()
        if table.manifest.get("output_kind") != "list":
            raise _UserError(404, "no_match_index", f"version {table.version} answers labels, not lists of items: it has no match index")
        return table

    async def _read_body(self, scope: dict[str, Any], receive: Any) -> bytes:
        limit = self.config.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise _UserError(413, "body_too_large", f"the body has {int(value)} bytes; at most {limit}", limit=limit, got=int(value))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _UserError(400, "disconnected", "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _UserError(413, "body_too_large", f"the body has more than {limit} bytes", limit=limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _healthz(self, scope: dict[str, Any], receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        table = self._serving()
        body = {
            # Still answering, from the version named below; what is wrong is in last_reload_error.
            "status": "ok" if self.last_error is None else "degraded",
            "table": self.config.table,
            "version": table.version,
            "keys": len(table),
            "output_column": table.output_column,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at or 0)),
            "last_reload_error": self.last_error,
        }
        return 200, orjson.dumps(body), [_JSON, (b"x-bulkinfer-version", table.version.encode())]

    async def _metrics(self, scope: dict[str, Any], receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return 200, generate_latest(self.metrics.registry), [(b"content-type", CONTENT_TYPE_LATEST.encode())]

    async def _openapi(self, scope: dict[str, Any], receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        output = self.table.output_column if self.table is not None else "output"
        return 200, orjson.dumps(openapi_schema(self.config, output)), [_JSON]

    async def _docs(self, scope: dict[str, Any], receive: Any) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        return 200, _DOCS_HTML, [(b"content-type", b"text/html; charset=utf-8")]


def _open_for_serving(location: str, version: str | None, cache_dir: str | None) -> PredictionTable:
    """Opens a version and, for list tasks, maps its match index (the trie and the claims: no
    reads), so a missing or damaged index fails here, off the event loop, not on a request."""
    table = open_table(location, version, cache_dir)
    if table.manifest.get("output_kind") == "list":
        try:
            table.match_index().load_automaton()
        except BaseException:
            table.close()
            raise
    return table


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no", ""):
        return False
    raise _UserError(422, f"bad_{name}", f"{name} must be true or false, got {value!r}")


def openapi_schema(config: ServeConfig, output_column: str) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the service (served at ``/openapi.json``)."""
    error = {"$ref": "#/components/schemas/Error"}
    answer_ref = {"$ref": "#/components/schemas/Answer"}

    def responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
        out: dict[str, Any] = {"200": {"description": "answered", "content": {"application/json": {"schema": ok}}}}
        for code in codes:
            out[str(code)] = {"description": _STATUS_TEXT[code], "content": {"application/json": {"schema": error}}}
        return out

    def batch_request(**extra: Any) -> dict[str, Any]:
        queries = {"type": "array", "maxItems": config.max_batch, "items": {"type": "string", "maxLength": config.max_query_chars}}
        schema = {"type": "object", "required": ["queries"], "properties": {"queries": queries, **extra}}
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def batch_answer(item: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "properties": {"version": {"type": "string"}, "results": {"type": "array", "items": item}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "bulkinfer lookup service", "version": "1", "description": f"Predictions of {config.table}, by query."},
        "paths": {
            "/v1/lookup": {
                "get": {
                    "summary": "Look one query up",
                    "parameters": [
                        {
                            "name": "q",
                            "in": "query",
                            "required": True,
                            "description": "the query as typed; normalised like the job",
                            "schema": {"type": "string", "maxLength": config.max_query_chars},
                        }
                    ],
                    "responses": responses(answer_ref, 400, 413, 422),
                },
                "post": {
                    "summary": "Look a batch of queries up, all in one version",
                    "requestBody": batch_request(),
                    "responses": responses(batch_answer(answer_ref), 400, 413, 422),
                },
            },
            "/v1/match": {
                "get": {
                    "summary": "Which concepts one query is about: items inside it (phrases) or the whole query (exact=true)",
                    "parameters": [
                        {"name": "q", "in": "query", "required": True, "schema": {"type": "string", "maxLength": config.max_query_chars}},
                        {"name": "exact", "in": "query", "required": False, "schema": {"type": "boolean", "default": False}},
                    ],
                    "responses": responses({"$ref": "#/components/schemas/Matches"}, 400, 404, 413, 422),
                },
                "post": {
                    "summary": "Match a batch of queries, all in one version",
                    "requestBody": batch_request(exact={"type": "boolean", "default": False}),
                    "responses": responses(batch_answer({"$ref": "#/components/schemas/Matches"}), 400, 404, 413, 422),
                },
            },
            "/healthz": {"get": {"summary": "The version served and the last reload error", "responses": responses({"type": "object"})}},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                }
            },
        },
        "components": {
            "schemas": {
                "Answer": {
                    "type": "object",
                    "required": ["query", "key", "found", output_column, "version"],
                    "properties": {
                        "query": {"type": "string", "description": "the query as given"},
                        "key": {"type": "string", "description": "the normalised key"},
                        "found": {"type": "boolean"},
                        output_column: {"description": "the prediction (a list of strings or a label); [] or null when not found"},
                        "version": {"type": "string", "description": "the table version that answered"},
                        "model": {"type": "string", "description": "the model that produced the answer (when found)"},
                        "run_id": {"type": "string", "description": "the run that produced the answer (when found)"},
                        "item_languages": {
                            "type": "array",
                            "items": {"type": ["string", "null"]},
                            "description": "tasks with target_languages: the language of each item, parallel to the output list",
                        },
                    },
                },
                "Matches": {
                    "type": "object",
                    "required": ["query", "key", "matches", "version"],
                    "properties": {
                        "query": {"type": "string", "description": "the query as given"},
                        "key": {"type": "string", "description": "the normalised query; start and end are code-point offsets into it"},
                        "matches": {
                            "type": "array",
                            "description": "in query order; an item several concepts claim gives one entry per concept, ranked",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "concept": {"type": "string"},
                                    "item": {"type": "string"},
                                    "language": {"type": ["string", "null"]},
                                    "start": {"type": "integer"},
                                    "end": {"type": "integer"},
                                },
                            },
                        },
                        "version": {"type": "string"},
                    },
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "limit": {"type": "integer"},
                                "got": {"type": "integer"},
                            },
                        }
                    },
                },
            }
        },
    }


_STATUS_TEXT = {
    400: "malformed request",
    404: "the table answers labels: no match index",
    413: "query, batch or body too large",
    422: "request of the wrong shape",
}

_DOCS_HTML = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>bulkinfer lookup service</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<p><noscript>The API description is at <a href="/openapi.json">/openapi.json</a>.</noscript></p>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>
"""


def serve(config: ServeConfig) -> None:
    """Runs the service until interrupted (one uvicorn worker).

    Raises:
        ImportError: uvicorn is missing.
        TableError: nothing is published at ``config.table``.
    """
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError("bulkinfer serve needs uvicorn: pip install 'uvicorn[standard]'") from e
    app = LookupApp(config)
    app.load()  # before binding: a table that cannot be served is a user error, reported as one
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            loop=_available("uvloop", "uvloop", "asyncio"),
            http=_http_protocol(config),
            lifespan="on",
            access_log=config.access_log,
            log_level="info",
            server_header=False,
        )
    )
    server.run()


def _http_protocol(config: ServeConfig) -> Any:
    """httptools with the request deadline and JSON parser errors; plain h11 where httptools is missing."""
    if _available("httptools", "httptools", "h11") == "h11":
        _LOG.warning("httptools is missing: no per-request deadline (pip install 'uvicorn[standard]')")
        return "h11"
    from bulkinfer.lookup.http_limits import limited_protocol

    return limited_protocol(config.request_timeout_s)


def _available(module: str, fast: str, fallback: str) -> str:
    import importlib.util

    return fast if importlib.util.find_spec(module) is not None else fallback
