"""Shared fixtures: a real PostgreSQL for every test that needs one.

``DICOMCLOUD_TEST_DATABASE_URL`` names a server (CI: Debian's PostgreSQL);
otherwise the embedded server of the ``pgserver`` wheel is started once.
Each test gets a database of its own (``database_url``; ``new_database`` makes
more), dropped afterwards. Also: ``fetch_rows`` (a query's rows as dicts) and
``throwaway`` (a ``redis-server`` of the test's own, tests/redis_server.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from tests.redis_server import ThrowawayRedis

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, on a thread of its own.

    ``asyncio.run`` on the main thread would replace (and leak) the event loop
    pytest-asyncio keeps there; its later garbage collection is a ResourceWarning,
    an error under ``filterwarnings = error``.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _with_database(url: str, name: str) -> str:
    base, sep, query = url.partition("?")
    scheme_host, _, _db = base.rpartition("/")
    return f"{scheme_host}/{name}{sep}{query}"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("DICOMCLOUD_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from dicomcloud.adapters.postgres.embedded import EmbeddedPostgres

    # Not under pytest's basetemp: pytest rotates those directories, and a
    # concurrent run could delete a live cluster.
    root = Path(tempfile.mkdtemp(prefix="dicomcloud-test-pg-"))
    server = EmbeddedPostgres(root / "pgdata")
    yield server.start()
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


async def fetch_rows(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """The rows ``sql`` selects on ``database_url``, each as a dict."""
    conn = await asyncpg.connect(database_url)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


@pytest.fixture
def new_database(pg_server_url: str) -> Iterator[Callable[[], str]]:
    """Make empty databases on the test server (each call one more); all dropped afterwards."""
    names: list[str] = []

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        run_sync(run(f'CREATE DATABASE "{name}"'))
        names.append(name)
        return _with_database(pg_server_url, name)

    yield make
    for name in names:
        run_sync(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(new_database: Callable[[], str]) -> str:
    """A database of this test's own."""
    return new_database()


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    """A ``redis-server`` of this test's own, killed afterwards."""
    server = ThrowawayRedis(tmp_path / "redis")
    server.start()
    yield server
    server.kill()
