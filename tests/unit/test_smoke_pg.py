import asyncpg

from dicomcloud.adapters.postgres.schema import migrate


async def test_migrations_apply_twice(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        await migrate(conn)
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema IN ('dicom_index', 'warehouse')"
            )
        }
    finally:
        await conn.close()
    assert {"patient", "study", "series", "instance", "dicom_image_meta"} <= tables
