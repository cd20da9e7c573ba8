"""asyncpg pool and transaction helpers.

One pool per process, opened in ``App.start`` and closed in ``App.stop``. Opening it does not fail when Postgres
is down (the pool then starts empty and connects on demand), so a process started while Postgres is down comes
up NOT_SERVING and turns SERVING by itself once Postgres answers.

Timeouts keep "Postgres down" fast: ``db_connect_timeout_seconds`` for new connections,
``db_command_timeout_seconds`` per statement, and ``db_acquire_timeout_seconds`` to get a connection from the
pool, shortened to what is left of the RPC's deadline (:mod:`services.common.deadline`). Exceeding it is
``UNAVAILABLE`` / ``DATABASE_UNAVAILABLE`` rather than a request stuck behind an exhausted pool; a refused
connection fails at once. When the client's deadline passes, grpc cancels the handler and asyncpg cancels the
running statement on the server.

    async with transaction(pool) as conn:
        await conn.execute(...)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, Literal

import asyncpg

from services.common import deadline
from services.common.dbtypes import Conn, Pool
from services.common.errors import Unavailable
from services.common.logging import get_logger
from services.common.settings import CommonSettings

__all__ = [
    "Pool",
    "close_pool",
    "connection",
    "create_pool",
    "ping",
    "transaction",
]

Isolation = Literal["read_committed", "repeatable_read", "serializable"]

DEFAULT_ACQUIRE_TIMEOUT_SECONDS: Final = 2.0
_acquire_timeout = DEFAULT_ACQUIRE_TIMEOUT_SECONDS
_log = get_logger("cowatch.db")
_DOWN: Final = (
    OSError,  # refused, unreachable, connect timeout (TimeoutError is an OSError)
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,  # starting up / shutting down
    asyncpg.exceptions.TooManyConnectionsError,
)
"""Postgres is (temporarily) not there; anything else at start (a wrong password, no such database) is fatal."""


async def _no_session_state_to_reset(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    return None


async def create_pool(
    settings: CommonSettings,
    *,
    application_name: str | None = None,
    dsn: str | None = None,
    max_size: int | None = None,
) -> Pool:
    """Open the process's pool (``dsn``/``max_size``: another server's, e.g. the read replica's). Never fails
    because Postgres is down: it then starts empty (connections are made on demand, the first RPCs answer
    UNAVAILABLE and health stays NOT_SERVING until Postgres answers).

    Also makes ``settings.db_acquire_timeout_seconds`` the default acquire timeout of :func:`connection` and
    :func:`transaction`.
    """
    global _acquire_timeout
    _acquire_timeout = settings.db_acquire_timeout_seconds
    dsn = dsn or settings.database_url
    options: dict[str, Any] = {
        "max_size": max_size or settings.db_pool_max_size,
        "command_timeout": settings.db_command_timeout_seconds,
        "timeout": settings.db_connect_timeout_seconds,
        # a connection idle for 5 minutes is closed; the pool reopens on demand
        "max_inactive_connection_lifetime": 300.0,
        # 0 behind PgBouncer < 1.21 in transaction pooling: each statement is then prepared unnamed and executed
        # with no Sync in between (asyncpg sends Flush), so PgBouncer keeps both on one server connection.
        "statement_cache_size": settings.db_statement_cache_size,
        "server_settings": {"application_name": application_name or settings.service_name},
        # On release asyncpg still rolls back an unfinished transaction and drops listeners; this skips only its
        # extra reset round trip (UNLISTEN, RESET ALL, advisory unlock), which service code never needs: it
        # keeps no session state (transaction-scoped locks and settings only). One round trip less per RPC.
        "reset": _no_session_state_to_reset,
    }
    try:
        # asyncpg keeps min_size connections open from here on (reconnecting in the background).
        pool: Pool = await asyncpg.create_pool(
            dsn, min_size=min(settings.db_pool_min_size, options["max_size"]), **options
        )
    except _DOWN as exc:
        _log.warning("postgres unavailable at start: starting with an empty pool", error=type(exc).__name__)
        pool = await asyncpg.create_pool(dsn, min_size=0, **options)
    return pool


async def close_pool(pool: Pool, *, grace_seconds: float = 5.0) -> None:
    """Close gracefully, or terminate the connections if that takes longer than ``grace_seconds``."""
    try:
        await asyncio.wait_for(pool.close(), grace_seconds)
    except TimeoutError:
        pool.terminate()


def _acquire_failed() -> Unavailable:
    return Unavailable("DATABASE_UNAVAILABLE", "no database connection available, retry later")


@asynccontextmanager
async def connection(pool: Pool, *, acquire_timeout: float | None = None) -> AsyncIterator[Conn]:
    """A pooled connection outside of an explicit transaction (each statement autocommits)."""
    timeout = deadline.bounded(_acquire_timeout if acquire_timeout is None else acquire_timeout)
    try:
        conn = await pool.acquire(timeout=timeout)
    except TimeoutError:
        raise _acquire_failed() from None
    try:
        yield conn
    finally:
        await pool.release(conn)


@asynccontextmanager
async def transaction(
    pool: Pool,
    *,
    isolation: Isolation | None = None,
    readonly: bool = False,
    acquire_timeout: float | None = None,
) -> AsyncIterator[Conn]:
    """A pooled connection inside one transaction: committed on normal exit, rolled back on any exception.

    ``acquire_timeout`` bounds the wait for a pooled connection (default: the settings' acquire timeout).
    """
    async with (
        connection(pool, acquire_timeout=acquire_timeout) as conn,
        conn.transaction(isolation=isolation, readonly=readonly),
    ):
        yield conn


async def ping(pool: Pool, *, within_seconds: float = 1.0) -> bool:
    """``SELECT 1`` within ``within_seconds`` (pool wait included); ``False`` on any failure, never raises."""
    try:
        async with asyncio.timeout(within_seconds):
            async with pool.acquire() as conn:
                return bool(await conn.fetchval("SELECT 1") == 1)
    except Exception:
        return False
