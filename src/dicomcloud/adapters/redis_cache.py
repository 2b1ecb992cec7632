"""The Cache port on Redis (redis-py's asyncio client).

``redis://[user:password@]host:port/db[?prefix=…]``: ``prefix`` is put before
every key, so that several archives (or test runs) can share one database.

Failing fast is the point of a cache: socket and connect timeouts are short
(0.5 s), redis-py's own retries are off, and every ``RedisError`` becomes
:class:`~dicomcloud.errors.Unavailable`; the caller decides what to do without
the cache.

:attr:`RedisCache.incarnation` is the server's ``run_id`` (``INFO server``),
read on every new connection before its first command: a restarted server
(restored from a snapshot or an append-only file, or a replica promoted by a
failover) has a new one. redis-py reconnects a pooled connection silently
when the server closed it, so a changed ``run_id`` is the only reliable sign
that the data may have gone back in time.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from dicomcloud.adapters.memory_cache import counter_start
from dicomcloud.errors import Unavailable
from dicomcloud.settings import mask_url

TIMEOUT = 0.5  # seconds: socket connect, each command, waiting for a pooled connection
MAX_CONNECTIONS = 64


def split_prefix(url: str) -> tuple[str, str]:
    """(``url`` without its ``prefix`` query item, the prefix)."""
    parts = urlsplit(url)
    items = parse_qsl(parts.query, keep_blank_values=True)
    prefix = "".join(v for k, v in items if k == "prefix")
    query = urlencode([(k, v) for k, v in items if k != "prefix"])
    return urlunsplit(parts._replace(query=query)), prefix


def _run_id(info: Any) -> str:
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "run_id" and value.strip():
            return value.strip()
    return ""


class RedisCache:
    def __init__(self, url: str, *, timeout: float = TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        """Connects lazily; raises ValueError for a URL redis-py does not understand."""
        plain, self._prefix = split_prefix(url)
        self._where = mask_url(plain)
        self._incarnation = ""
        self._pool: BlockingConnectionPool = BlockingConnectionPool.from_url(
            plain,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            redis_connect_func=self._on_connect,
        )
        self._client = Redis(connection_pool=self._pool)

    @property
    def incarnation(self) -> str:
        return self._incarnation

    async def _on_connect(self, connection: AbstractConnection) -> None:
        await connection.on_connect()  # AUTH, SELECT, … as redis-py would
        await connection.send_command("INFO", "server", check_health=False)
        try:
            run_id = _run_id(await connection.read_response())
        except ResponseError:  # INFO renamed or refused (some managed services)
            run_id = ""
        # A server that does not tell its run_id: every connection might be a new lifetime.
        self._incarnation = run_id or f"unknown-{uuid.uuid4().hex}"

    def _error(self, exc: RedisError) -> Unavailable:
        return Unavailable(f"the cache at {self._where} failed: {type(exc).__name__}: {exc}")

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            values = await self._client.mget([self._prefix + k for k in keys])
        except RedisError as exc:
            raise self._error(exc) from exc
        return [v.encode() if isinstance(v, str) else v for v in values]  # str only if decoding were on

    async def set(self, key: str, value: bytes, ttl_seconds: int | None) -> None:
        try:
            await self._client.set(self._prefix + key, value, ex=ttl_seconds)
        except RedisError as exc:
            raise self._error(exc) from exc

    async def incr_many(self, keys: Sequence[str], ttl_seconds: int | None) -> list[int]:
        if not keys:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    # A missing counter starts far from 0 (see ports.Cache.incr_many).
                    pipe.set(self._prefix + key, counter_start(), nx=True, ex=ttl_seconds)
                    pipe.incr(self._prefix + key)
                    if ttl_seconds is not None:
                        pipe.expire(self._prefix + key, ttl_seconds)
                results = await pipe.execute()
        except RedisError as exc:
            raise self._error(exc) from exc
        step = 3 if ttl_seconds is not None else 2
        return [int(results[i + 1]) for i in range(0, len(results), step)]

    async def close(self) -> None:
        await self._client.aclose()
        await self._pool.aclose()
