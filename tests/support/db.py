"""Database helpers for tests: a fresh migrated database per session, and wiping the cowatch tables."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from services.common.dbtypes import Conn
from services.dev.migrate import MIGRATIONS_DIR, create_database, drop_database, migrate

# Every schema the migrations create; tables are discovered so this keeps working as migrations grow.
COWATCH_SCHEMAS: tuple[str, ...] = ("account", "event", "booking", "review", "notify", "idem")
TEST_DB_PREFIX = "cowatch_test_"

_TABLES_SQL = """
SELECT format('%I.%I', table_schema, table_name)
FROM information_schema.tables
WHERE table_schema = ANY($1::text[]) AND table_type = 'BASE TABLE'
ORDER BY 1
"""


def new_test_database_name() -> str:
    return TEST_DB_PREFIX + secrets.token_hex(6)


async def create_migrated_database(
    server_url: str, name: str | None = None, migrations_dir: Path = MIGRATIONS_DIR
) -> tuple[str, str]:
    """Create a fresh database on ``server_url`` and run the dbmate migrations on it; returns (name, url).
    The caller drops it with :func:`services.dev.migrate.drop_database`."""
    name = name or new_test_database_name()
    url = await create_database(server_url, name)
    try:
        await asyncio.to_thread(migrate, url, migrations_dir)
    except BaseException:
        await drop_database(server_url, name)
        raise
    return name, url


async def cowatch_tables(conn: Conn) -> list[str]:
    """Qualified, quoted names of every table in the cowatch schemas."""
    return [row[0] for row in await conn.fetch(_TABLES_SQL, list(COWATCH_SCHEMAS))]


async def truncate_cowatch_tables(conn: Conn) -> list[str]:
    """Empty every table of the cowatch schemas (identities restarted). Refuses to run on a database
    that is not a test database, so a stray DATABASE_URL can never wipe real data."""
    database = await conn.fetchval("SELECT current_database()")
    if not str(database).startswith(TEST_DB_PREFIX):
        raise RuntimeError(f"refusing to truncate tables of {database!r}: not a {TEST_DB_PREFIX}* database")
    tables = await cowatch_tables(conn)
    if tables:
        async with conn.transaction():
            # A test that leaked an open transaction would otherwise make this hang until the test timeout.
            await conn.execute("SET LOCAL lock_timeout = '10s'")
            await conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    return tables


__all__ = [
    "COWATCH_SCHEMAS",
    "TEST_DB_PREFIX",
    "cowatch_tables",
    "create_migrated_database",
    "drop_database",
    "new_test_database_name",
    "truncate_cowatch_tables",
]
