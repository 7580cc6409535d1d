"""Redis as a cache consumer: export a version under its own namespace, then flip one pointer.

Key layout (``NAME`` is the table name, ``VERSION`` a version, ``KEY`` a normalised key)::

    bulkinfer:NAME:current            STRING  the version readers use
    bulkinfer:NAME:VERSION:k:KEY      STRING  JSON {"<output column>": ..., "model": ..., "run_id": ...}
    bulkinfer:NAME:VERSION:m:ITEM     STRING  list tasks: JSON [{"concept": ..., "language": ...}, ...], the concepts
                                              claiming a normalised item (or key), ranked (exact matches)
    bulkinfer:NAME:VERSION:meta       HASH    version, output_column, output_kind, keys, exported_at, table
    bulkinfer:NAME:namespaces         SET     versions whose keys may still be in Redis

A reader in any language: ``GET bulkinfer:NAME:current``, then ``GET
bulkinfer:NAME:<version>:k:<normalised query>`` (or ``MGET`` for a batch). The
export writes every key of the new version first, then swaps the pointer with one
``SET``, so a reader sees either the old version whole or the new one whole. Keys
of superseded versions get a TTL of the grace period instead of being deleted: a
reader that read the old pointer a moment ago (or caches it for a few seconds)
still finds them. An export that died half way left a namespace no pointer names;
the next export expires it the same way.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from bulkinfer.errors import ConfigError, TableError
from bulkinfer.format import layout
from bulkinfer.keys import normalize_key
from bulkinfer.lookup.match import ITEM_LANGUAGES
from bulkinfer.lookup.union import read_lookup_rows

PREFIX = "bulkinfer"
"""First segment of every key the export writes."""

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RedisExportConfig:
    """Where and how a version is exported to Redis."""

    url: str
    """Redis URL, e.g. ``redis://127.0.0.1:6379/0`` (``rediss://`` for TLS, ``redis://:password@host``)."""
    name: str
    """Table name in the key layout; letters, digits, ``.``, ``_``, ``-``."""
    grace_seconds: int = 600
    """How long keys of a superseded version stay readable after the pointer moved."""
    batch_keys: int = 10_000
    """Keys per pipelined round trip."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"url must start with redis://, rediss:// or unix://, got {redact(self.url)!r}")
        if not layout.valid_version(self.name):
            raise ConfigError(f"name must be letters, digits, '.', '_' or '-' (at most 128), got {self.name!r}")
        if self.grace_seconds < 1:
            raise ConfigError(f"grace_seconds must be >= 1, got {self.grace_seconds}")
        if not 1 <= self.batch_keys <= 1_000_000:
            raise ConfigError(f"batch_keys must be in [1, 1000000], got {self.batch_keys}")


def pointer_key(name: str) -> str:
    """The key holding the version readers use."""
    return f"{PREFIX}:{name}:current"


def namespaces_key(name: str) -> str:
    """The set of versions whose keys may still be in Redis."""
    return f"{PREFIX}:{name}:namespaces"


def namespace(name: str, version: str) -> str:
    """The prefix of every key of one version (``...:meta`` and ``...:k:<key>``)."""
    return f"{PREFIX}:{name}:{version}"


def value_key(name: str, version: str, key: str) -> str:
    """The key holding one prediction of a version."""
    return f"{PREFIX}:{name}:{version}:k:{key}"


def match_key(name: str, version: str, item: str) -> str:
    """The key holding the concepts that claim one normalised item of a version (exact matches)."""
    return f"{PREFIX}:{name}:{version}:m:{item}"


def redact(url: str) -> str:
    """A URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str) -> Any:
    """A ``redis.Redis`` client for a URL, checked with a PING.

    Raises:
        ImportError: the ``redis`` package is missing.
        ConfigError: nothing answers at the URL.
    """
    try:
        import redis
    except ImportError as e:
        raise ImportError("Redis export and reads need the redis client: pip install 'redis>=5' hiredis") from e
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=60)
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError, redis.ResponseError) as e:
        raise ConfigError(f"--url {redact(url)}: cannot reach Redis ({e})") from e
    return client


def export_version(table: str, config: RedisExportConfig, version: str | None = None, client: Any = None) -> dict[str, Any]:
    """Writes one version of a table to Redis and points readers at it.

    Args:
        table: the table directory.
        config: where and how to write.
        version: the version to export; default: the published one.
        client: a ``redis.Redis`` to use instead of connecting to ``config.url``.

    Returns:
        A summary: name, version, previous (the version the pointer named before),
        keys, seconds, keys_per_second, expiring (namespaces given the grace TTL).

    Raises:
        TableError: nothing published, or the version is incomplete.
        ConfigError: Redis cannot be reached.
    """
    if version is None and layout.read_current(table) is None:
        raise TableError(f"{table} has no published version (no {layout.CURRENT} file); nothing to export")
    version, manifest = layout.resolve_version(table, version)
    vdir = layout.version_dir(table, version)
    output = str(manifest.get("output_column", ""))
    rows = read_lookup_rows(vdir, manifest)  # fanned out: one row per key, its languages' items unioned
    client = client or connect(config.url)
    started = time.perf_counter()
    # Registered before the first write, so an export that dies half way is found and expired by the next.
    client.sadd(namespaces_key(config.name), version)
    written = _write(client, config, version, output, rows)
    items = _write_matches(client, config, version, output, rows) if manifest.get("output_kind") == "list" else 0
    meta = {
        "version": version,
        "output_column": output,
        "output_kind": str(manifest.get("output_kind", "")),
        "keys": written,
        "match_items": items,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "table": table if "://" in table else os.path.abspath(table),
    }
    meta_key = f"{namespace(config.name, version)}:meta"
    client.hset(meta_key, mapping=meta)
    client.persist(meta_key)  # it may carry a TTL from when this version was superseded before
    seconds = time.perf_counter() - started
    previous = client.set(pointer_key(config.name), version, get=True)
    previous = previous.decode() if isinstance(previous, bytes) else previous
    expiring = expire_superseded(client, config, keep=version)
    _LOG.info("exported %s version %s to %s: %d keys in %.1f s", table, version, redact(config.url), written, seconds)
    return {
        "name": config.name,
        "version": version,
        "previous": previous,
        "keys": written,
        "match_items": items,
        "seconds": round(seconds, 3),
        "keys_per_second": round(written / seconds) if seconds else None,
        "expiring": expiring,
        "grace_seconds": config.grace_seconds,
    }


def _write(client: Any, config: RedisExportConfig, version: str, output: str, rows: Any) -> int:
    # One MSET per batch: a single command with many pairs costs the client and the
    # server far less than one SET per key (see bench/redis_export.py).
    prefix = f"{namespace(config.name, version)}:k:".encode()
    written = 0
    for batch in rows.to_batches(config.batch_keys):
        # Fanned-out versions also carry the language of each item, parallel to the output list.
        names = [output, "model", "run_id", *([ITEM_LANGUAGES] if ITEM_LANGUAGES in batch.schema.names else [])]
        values = zip(*(batch.column(name).to_pylist() for name in names), strict=True)
        pairs: dict[bytes, bytes] = {
            prefix + key.encode(): orjson.dumps(dict(zip(names, value, strict=True)))
            for key, value in zip(batch.column("key").to_pylist(), values, strict=True)
        }
        client.mset(pairs)
        written += len(pairs)
    return written


def _write_matches(client: Any, config: RedisExportConfig, version: str, output: str, rows: Any) -> int:
    from bulkinfer.lookup.match import collect_claims

    prefix = f"{namespace(config.name, version)}:m:".encode()
    claims = collect_claims(rows, output)
    for start in range(0, len(claims), config.batch_keys):
        batch = claims[start : start + config.batch_keys]
        client.mset(
            {
                prefix + item.encode(): orjson.dumps([{"concept": concept, "language": language} for concept, language in ranked])
                for item, ranked in batch
            }
        )
    return len(claims)


def expire_superseded(client: Any, config: RedisExportConfig, keep: str) -> list[str]:
    """Gives every key of every namespace but ``keep`` a TTL of the grace period; returns those namespaces.

    Keys that already carry a TTL keep it (``EXPIRE ... NX``), so a second export
    within the grace period does not stretch the first one's.
    """
    expiring = []
    for member in sorted(client.smembers(namespaces_key(config.name))):
        old = member.decode() if isinstance(member, bytes) else member
        if old == keep:
            continue
        pipe = client.pipeline(transaction=False)
        for keys in _scan(client, f"{_glob_escape(namespace(config.name, old))}:*", config.batch_keys):
            for key in keys:
                pipe.expire(key, config.grace_seconds, nx=True)
            pipe.execute()
        client.srem(namespaces_key(config.name), old)
        expiring.append(old)
    return expiring


def _scan(client: Any, match: str, count: int) -> Iterator[list[bytes]]:
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, match=match, count=count)
        if keys:
            yield keys
        if cursor == 0:
            return


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


class RedisTable:
    """Reads an exported table from Redis, with the job's normaliser.

    The pointer is read at most every ``pointer_ttl_s`` seconds (a reader would
    otherwise pay two round trips per lookup); the grace period of superseded
    versions must be longer, and is by default (600 s against 1 s).
    """

    def __init__(self, url: str, name: str, *, pointer_ttl_s: float = 1.0, client: Any = None):
        """Args:
        url: Redis URL.
        name: table name used at export.
        pointer_ttl_s: seconds a read pointer is reused.
        client: a ``redis.Redis`` to use instead of connecting to ``url``.
        """
        self.name = name
        """Table name in the key layout."""
        self._url = url
        self._client = client
        self._pointer_ttl_s = pointer_ttl_s
        self._pointer: tuple[float, str] | None = None

    @property
    def client(self) -> Any:
        """The Redis client (connected on first use)."""
        if self._client is None:
            self._client = connect(self._url)
        return self._client

    @property
    def version(self) -> str:
        """The version readers are pointed at.

        Raises:
            TableError: nothing exported under this name.
        """
        now = time.monotonic()
        if self._pointer is None or now - self._pointer[0] > self._pointer_ttl_s:
            current = self.client.get(pointer_key(self.name))
            if current is None:
                raise TableError(f"Redis at {redact(self._url)} has no {pointer_key(self.name)}; run `bulkinfer export redis` first")
            self._pointer = (now, current.decode())
        return self._pointer[1]

    def get(self, query: str) -> dict[str, Any] | None:
        """The exported prediction for a query (output column, model, run_id, key, version), or None."""
        return self.get_many([query])[0]

    def get_many(self, queries: Iterable[str]) -> list[dict[str, Any] | None]:
        """``get`` for each query, in order, with one MGET."""
        version = self.version
        keys = [normalize_key(q) for q in queries]
        if not keys:
            return []
        values = self.client.mget([value_key(self.name, version, key) for key in keys])
        return [
            None if value is None else {**orjson.loads(value), "key": key, "version": version}
            for key, value in zip(keys, values, strict=True)
        ]

    def match(self, query: str) -> dict[str, Any]:
        """Exact matches of a query: ``{"query", "key", "matches", "version"}`` like ``PredictionTable.match(q, exact=True)``."""
        return self.match_many([query])[0]

    def match_many(self, queries: Iterable[str]) -> list[dict[str, Any]]:
        """``match`` for each query, in order, with one MGET."""
        version = self.version
        queries = list(queries)
        keys = [normalize_key(q) for q in queries]
        if not keys:
            return []
        values = self.client.mget([match_key(self.name, version, key) for key in keys])
        return [
            {
                "query": query,
                "key": key,
                "matches": [
                    {"concept": claim["concept"], "item": key, "language": claim["language"], "start": 0, "end": len(key)}
                    for claim in (orjson.loads(value) if value is not None else [])
                ],
                "version": version,
            }
            for query, key, value in zip(queries, keys, values, strict=True)
        ]
