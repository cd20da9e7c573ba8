"""The test infrastructure itself: the session database, the embedded servers, the cleaning helper."""

from __future__ import annotations

import re
from collections.abc import Callable

import asyncpg
import pytest
import redis.asyncio

from services.dev.embedded_pg import EmbeddedPostgres
from services.dev.migrate import MIGRATIONS_DIR, dbmate_url
from tests.support.db import COWATCH_SCHEMAS, TEST_DB_PREFIX, truncate_cowatch_tables
from tests.support.redis_server import RedisServer


def _migration_versions() -> set[str]:
    versions = set()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        match = re.match(r"^(\d+)_", path.name)
        if match:
            versions.add(match.group(1))
    return versions


async def test_session_database_is_fresh_and_fully_migrated(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        assert (await conn.fetchval("SELECT current_database()")).startswith(TEST_DB_PREFIX)
        applied = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        schemas = {
            row["nspname"]
            for row in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])",
                                        list(COWATCH_SCHEMAS))
        }  # fmt: skip
    assert _migration_versions(), f"no migrations in {MIGRATIONS_DIR}"
    assert applied == _migration_versions()
    assert schemas == set(COWATCH_SCHEMAS)


async def test_truncate_empties_tables_and_restarts_identities(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:  # all inside one rolled-back transaction: other tests never see the probe table
            await conn.execute("CREATE TABLE idem.infra_probe (id bigserial PRIMARY KEY, v text)")
            await conn.execute("INSERT INTO idem.infra_probe (v) VALUES ('a'), ('b')")
            tables = await truncate_cowatch_tables(conn)
            assert "idem.infra_probe" in tables
            assert await conn.fetchval("SELECT count(*) FROM idem.infra_probe") == 0
            assert await conn.fetchval("INSERT INTO idem.infra_probe (v) VALUES ('c') RETURNING id") == 1
        finally:
            await tr.rollback()


async def test_truncate_refuses_a_database_that_is_not_a_test_database(pg_server_url: str) -> None:
    conn = await asyncpg.connect(pg_server_url)  # the maintenance database, never a cowatch_test_*
    try:
        with pytest.raises(RuntimeError, match="refusing to truncate"):
            await truncate_cowatch_tables(conn)
    finally:
        await conn.close()


def test_dbmate_url_disables_tls_only_for_local_servers() -> None:
    assert (
        dbmate_url("postgresql://postgres@127.0.0.1:5432/db") == "postgres://postgres@127.0.0.1:5432/db?sslmode=disable"
    )
    assert dbmate_url("postgres://u@db.internal/db") == "postgres://u@db.internal/db"
    assert dbmate_url("postgres://u@localhost/db?sslmode=require").endswith("?sslmode=require")


async def test_embedded_postgres_survives_kill_and_restarts_on_same_port(
    pg_factory: Callable[..., EmbeddedPostgres],
) -> None:
    pg = pg_factory()
    port, url = pg.port, pg.url
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("SHOW max_connections") == "300"
    assert await conn.fetchval("SHOW fsync") == "off"
    await conn.execute("CREATE TABLE t (v int)")
    # The test server runs with synchronous_commit=off; a commit that must survive a crash asks for it.
    await conn.execute("SET synchronous_commit = on")
    await conn.execute("INSERT INTO t VALUES (1)")

    pg.kill()
    assert not pg.running
    with pytest.raises(asyncpg.PostgresConnectionError):
        await conn.fetchval("SELECT 1")
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(url, timeout=2)

    pg.restart()  # crash recovery, same port and data
    assert pg.port == port
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("SELECT sum(v) FROM t") == 1
    await conn.close()

    pg.stop()
    assert not pg.running
    pg.start()
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("SELECT count(*) FROM t") == 1
    await conn.close()


async def test_redis_url_answers_and_private_redis_restarts_on_same_port(
    redis_client: redis.asyncio.Redis,
    redis_key_prefix: str,
    redis_factory: Callable[..., RedisServer],
) -> None:
    await redis_client.set(redis_key_prefix + "infra", "1", ex=60)
    assert await redis_client.get(redis_key_prefix + "infra") == b"1"

    server = redis_factory()
    client = redis.asyncio.Redis.from_url(server.url, socket_timeout=2)
    try:
        await client.set("k", "v")
        server.kill()
        with pytest.raises(redis.ConnectionError):
            await client.get("k")
        port = server.port
        server.restart()
        assert server.port == port
        assert await client.get("k") is None  # no persistence: a restart comes back empty
    finally:
        await client.aclose()


async def test_paused_embedded_postgres_hangs_until_resumed(pg_factory: Callable[..., EmbeddedPostgres]) -> None:
    pg = pg_factory()
    conn = await asyncpg.connect(pg.url)
    try:
        pg.pause()
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT 1", timeout=0.3)
        pg.resume()
        conn2 = await asyncpg.connect(pg.url)
        assert await conn2.fetchval("SELECT 2") == 2
        await conn2.close()
    finally:
        pg.resume()
        await conn.close(timeout=2)
