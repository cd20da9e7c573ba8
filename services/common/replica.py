"""Where the lag-tolerant reads go: a streaming replica when one is configured and healthy, else the primary.

Only the reads the README lists as lag-tolerant (Scaling, Read replicas) take a :class:`ReadPool`: public
``ListEvents`` pages, ``GetEvent`` for anonymous readers, host profiles, ratings and anonymous ``ListReviews``.
Everything else — writes, everything inside a write's transaction, and reads that follow the caller's own write —
keeps using the primary's pool, so no code path can pick the replica by accident.

Without ``COWATCH_READ_DATABASE_URL`` a ReadPool is the primary's pool under another name. With it, a read goes to
the replica unless the replica is known not to serve, and falls back to the primary at once when it does not:

- **down or unreachable** (connect refused or timed out, no pooled connection in time, the connection lost, the
  server starting or shutting down), or a query cancelled by a conflict with WAL replay: the read is retried on
  the primary, and ``FAILURE_THRESHOLD`` such failures in a row open a :class:`CircuitBreaker` (gauge
  ``cowatch_circuit_breaker_state{breaker="postgres_replica"}``): reads go to the primary without trying it;
- **behind** by more than ``COWATCH_READ_DB_MAX_LAG_SECONDS``: checked every ``CHECK_SECONDS`` in the background;
  a replica too far behind opens the breaker the same way.

While open, a background probe checks the replica every ``CHECK_SECONDS`` (it answers, and is not too far behind)
and closes the breaker. No request waits on a replica known to be down, and the replica is never the reason a
process is NOT_SERVING: readiness stays "the primary answers", since every read can still be served.

Lag is measured on the replica: 0 when it has replayed everything it received (or is no standby at all, e.g. a
promoted one), else the age of the last transaction it replayed. This errs on the safe side right after a quiet
spell (the last replayed commit is old while new WAL is being applied: the breaker opens for a check or two). A
replica cut off from its primary only knows what it received, so watch ``pg_stat_replication`` on the primary too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import asyncpg

from services.common import db
from services.common.breaker import BreakerState, CircuitBreaker
from services.common.dbtypes import Conn, Pool
from services.common.errors import Unavailable
from services.common.logging import get_logger

__all__ = ["BREAKER_NAME", "ReadPool"]

T = TypeVar("T")

BREAKER_NAME: Final = "postgres_replica"
FAILURE_THRESHOLD: Final = 3
CHECK_SECONDS: Final = 1.0
LAG_SQL: Final = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN pg_last_wal_receive_lsn() IS NOT NULL AND pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
    ELSE coalesce(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()), 'Infinity')
END::float8
"""
"""Seconds the replica is behind: 0 when it has replayed all it received, else the age of what it replayed last."""

_REPLICA_FAILED: Final = (
    OSError,  # refused, unreachable, reset; TimeoutError (connect or command timeout) is an OSError
    asyncpg.exceptions.PostgresConnectionError,  # the connection is gone
    asyncpg.exceptions.InterfaceError,  # e.g. "connection is closed"
    asyncpg.exceptions.CannotConnectNowError,  # starting up / shutting down
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,  # "canceling statement due to conflict with recovery"
    Unavailable,  # no pooled connection within the acquire timeout (db.connection)
)
"""The replica did not serve; the primary can. Anything else (a bad query, a cancelled RPC) is no reason to retry."""

_log = get_logger("cowatch.replica")


class ReplicaLagging(Exception):
    """The probe's verdict: the replica answers but is further behind than allowed."""


class ReadPool:
    """Lag-tolerant reads: :meth:`fetch` runs ``read(conn)`` on the replica, or on the primary when there is none
    or it does not serve. Open with :meth:`start` (in the running loop), close with :meth:`aclose`."""

    def __init__(
        self,
        primary: Pool,
        replica: Pool | None = None,
        *,
        max_lag_seconds: float = 10.0,
        check_seconds: float = CHECK_SECONDS,
        on_breaker_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self._max_lag = max_lag_seconds
        self._check_seconds = check_seconds
        self.breaker = CircuitBreaker(
            BREAKER_NAME,
            failure_threshold=FAILURE_THRESHOLD,
            reset_timeout=check_seconds,
            probe=self._check,
            on_change=on_breaker_change,
        )
        if on_breaker_change is not None:
            on_breaker_change(BREAKER_NAME, BreakerState.CLOSED)
        self._monitor: asyncio.Task[None] | None = None

    @property
    def uses_replica(self) -> bool:
        """Would a read now go to the replica?"""
        return self.replica is not None and self.breaker.closed

    async def fetch(
        self, read: Callable[[Conn], Awaitable[T]], *, recheck: type[Exception] | tuple[type[Exception], ...] = ()
    ) -> T:
        """``await read(conn)`` on one connection of the replica, else of the primary (see the module's doc).
        ``recheck``: exceptions the replica's answer may owe to its lag (a row not replayed yet, e.g. NotFound):
        then the primary answers instead."""
        if self.replica is not None and self.breaker.allow():
            try:
                async with db.connection(self.replica) as conn:
                    result = await read(conn)
            except _REPLICA_FAILED as exc:
                _log.warning("read replica failed: reading the primary", error=type(exc).__name__)
                self.breaker.failure()
            except recheck:
                self.breaker.success()  # it answered; the primary confirms
            else:
                self.breaker.success()
                return result
        async with db.connection(self.primary) as conn:
            return await read(conn)

    async def lag_seconds(self) -> float:
        """How far behind the replica is (0 without one); raises when it does not answer."""
        if self.replica is None:
            return 0.0
        async with asyncio.timeout(max(self._check_seconds, 1.0)), self.replica.acquire() as conn:
            lag = await conn.fetchval(LAG_SQL)
        return float(lag) if lag is not None else math.inf

    async def _check(self) -> None:
        lag = await self.lag_seconds()
        if lag > self._max_lag:
            raise ReplicaLagging(f"{lag:.1f}s behind (at most {self._max_lag:g}s allowed)")

    async def _watch(self) -> None:
        """While the breaker is closed, check the replica every ``check_seconds``; open it when the check fails
        (while it is open, the breaker's own probe checks, and closes it again)."""
        while True:
            await asyncio.sleep(self._check_seconds)
            if not self.breaker.closed:
                continue
            try:
                await self._check()
            except Exception as exc:
                _log.warning("read replica unusable: reading the primary", reason=str(exc) or type(exc).__name__)
                self.breaker.trip()

    async def start(self) -> None:
        if self.replica is not None and self._monitor is None:
            self._monitor = asyncio.get_running_loop().create_task(self._watch(), name="read-replica-monitor")

    async def aclose(self) -> None:
        """Stop checking and close the replica's pool (the primary's belongs to the app)."""
        task, self._monitor = self._monitor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.breaker.aclose()
        if self.replica is not None:
            await db.close_pool(self.replica)
