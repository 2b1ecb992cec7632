"""asyncpg pool with the codecs every PostgreSQL adapter relies on (jsonb ↔ dict via orjson)."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from dicomcloud.errors import Unavailable


async def _init(conn: asyncpg.Connection) -> None:
    for name in ("jsonb", "json"):
        await conn.set_type_codec(
            name,
            schema="pg_catalog",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            format="text",
        )


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> Any:
    try:
        return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init, command_timeout=60)
    except (OSError, asyncpg.PostgresError) as exc:
        raise Unavailable(f"PostgreSQL is not reachable: {exc}") from exc
