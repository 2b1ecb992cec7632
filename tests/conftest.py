"""Shared fixtures: a real PostgreSQL for every test that needs one.

``DICOMCLOUD_TEST_DATABASE_URL`` names a server (CI: Debian's PostgreSQL);
otherwise the embedded server of the ``pgserver`` wheel is started once.
Each test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest


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


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield _with_database(pg_server_url, name)
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
