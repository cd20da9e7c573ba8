"""Session-wide test infrastructure: a real PostgreSQL and Redis, never a shared one's data.

PostgreSQL: ``DATABASE_URL`` names a server (any database on it; CI: the shared 127.0.0.1:5432); unset, an
embedded PostgreSQL is started for the session. Either way the suite creates its own database
``cowatch_test_<random>``, migrates it with dbmate and drops it at the end.

Redis: ``REDIS_URL`` names a server; unset, a private ``redis-server`` is started. On a shared server tests
must only touch keys under ``redis_key_prefix`` (deleted at the end) — nothing ever flushes it.

All servers the suite starts itself die with it. Fault tests start their own with ``pg_factory`` /
``redis_factory`` and may kill them at will.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest
import pytest_asyncio
import redis
import redis.asyncio

from services.dev.embedded_pg import EmbeddedPostgres
from services.dev.migrate import drop_database
from tests.support.db import create_migrated_database, truncate_cowatch_tables
from tests.support.redis_server import RedisServer
from tests.support.tools import require

# ---------------------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server (maintenance database) the suite may create databases on."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with EmbeddedPostgres() as pg:
        yield pg.url


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url(pg_server_url: str) -> AsyncIterator[str]:
    """URL of this session's own database, fully migrated; dropped when the session ends."""
    name, url = await create_migrated_database(pg_server_url)
    try:
        yield url
    finally:
        await drop_database(pg_server_url, name)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def db_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """One asyncpg pool on the session database, shared by all tests (session event loop)."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=20)
    try:
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture(loop_scope="session")
async def clean_db(db_pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Pool]:
    """Opt-in: every table of the cowatch schemas is emptied (identities restarted) before the test.
    Yields the session pool."""
    async with db_pool.acquire() as conn:
        await truncate_cowatch_tables(conn)
    yield db_pool


@pytest.fixture
def pg_factory() -> Iterator[Callable[..., EmbeddedPostgres]]:
    """Start private PostgreSQL servers (e.g. to kill in fault tests); all are closed after the test.
    ``pg_factory(**kwargs)`` takes :class:`EmbeddedPostgres` arguments and returns a started server."""
    servers: list[EmbeddedPostgres] = []

    def make(**kwargs: object) -> EmbeddedPostgres:
        pg = EmbeddedPostgres(**kwargs)  # type: ignore[arg-type]
        servers.append(pg)
        return pg.start()

    yield make
    for pg in servers:
        pg.close()


# ---------------------------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server: ``REDIS_URL`` if set, else a private ``redis-server`` for the session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    require("redis-server", "a private Redis (or set REDIS_URL)")
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this session; every key under it is deleted when the session ends."""
    prefix = f"cowatch-test:{secrets.token_hex(4)}:"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    except redis.RedisError:
        pass  # a fault test may have left the server down; a test-only prefix is harmless
    finally:
        client.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """Session-wide asyncio Redis client. Use only keys under ``redis_key_prefix``."""
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-servers (to stop or kill in fault tests); all are closed after the test."""
    require("redis-server", "private Redis servers of the fault tests")
    servers: list[RedisServer] = []

    def make(**kwargs: object) -> RedisServer:
        server = RedisServer(**kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.close()
