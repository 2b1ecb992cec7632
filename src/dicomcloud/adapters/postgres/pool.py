"""asyncpg pool with the codecs every PostgreSQL adapter relies on (jsonb ↔ dict via orjson).

:class:`Pool` wraps asyncpg's pool so that a database that is down, restarting
or unreachable surfaces as :class:`~dicomcloud.errors.Unavailable` (DIMSE
0xA700, HTTP 503) from every adapter, instead of as a driver exception: the
service keeps serving what does not need the database, and asyncpg reconnects
by itself when it is back. Errors in the SQL itself are not translated.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson

from dicomcloud.errors import Unavailable

ACQUIRE_TIMEOUT = 10.0  # seconds to get a connection before the request fails with 503

# The database is away (refused, reset, shut down, restarting) — not a bad query.
_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin / crash shutdown, cannot connect now
)


async def _init(conn: asyncpg.Connection) -> None:
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name,
            schema="pg_catalog",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            format="text",
        )


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except Unavailable:
        raise
    except _DOWN as exc:
        raise Unavailable(f"PostgreSQL is unavailable: {type(exc).__name__}: {exc}") from exc


class Pool:
    """The subset of asyncpg's pool the adapters use, with outages as :class:`Unavailable`."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        with _translated():
            return list(await self._pool.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Any:
        with _translated():
            return await self._pool.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        with _translated():
            return await self._pool.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        with _translated():
            return str(await self._pool.execute(query, *args))

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        with _translated():
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                yield conn

    async def close(self) -> None:
        with contextlib.suppress(*_DOWN):
            await self._pool.close()


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> Pool:
    """A pool on ``url``; ``min_size=0`` connects only on first use (services that may not need it)."""
    try:
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init, command_timeout=60)
    except (*_DOWN, asyncpg.PostgresError) as exc:
        raise Unavailable(f"PostgreSQL is not reachable: {exc}") from exc
    return Pool(pool)


class NoDatabase(Pool):
    """For a service run without a database (``storescp`` needs none): every use is refused."""

    def __init__(self, why: str) -> None:
        super().__init__(None)
        self._why = why

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        raise Unavailable(self._why)

    async def fetchrow(self, query: str, *args: Any) -> Any:
        raise Unavailable(self._why)

    async def fetchval(self, query: str, *args: Any) -> Any:
        raise Unavailable(self._why)

    async def execute(self, query: str, *args: Any) -> str:
        raise Unavailable(self._why)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        raise Unavailable(self._why)
        yield  # pragma: no cover

    async def close(self) -> None:
        return None
