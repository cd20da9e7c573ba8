"""The outbox relay: ``notify.outbox`` rows → ``NotificationService.Send``.

One round (:meth:`Relay.run_once`):

1. **Claim** up to ``batch_size`` due ``PENDING`` rows in one short statement: ``FOR UPDATE SKIP LOCKED`` (any
   number of workers can claim side by side, never the same row) and push their ``next_attempt_time``
   ``lease_seconds`` ahead. The lease is the claim: it outlives the statement's lock, so no transaction stays
   open while we talk to the network.
2. **Send** each row (concurrently, at most ``send_concurrency`` in flight) with its ``dedupe_key``. Meanwhile a
   **heartbeat** pushes the batch's leases ``lease_seconds`` ahead again every ``heartbeat_seconds``: a live
   worker keeps its claims however long the batch takes, and a dead one's lapse one short lease after its last
   beat (seconds, not the length of the slowest possible batch).
3. **Record** the outcomes in one statement each: ``SENT``; or ``attempts + 1``, ``last_error`` and a new
   ``next_attempt_time`` = now + exponential backoff with jitter; or ``DEAD`` after ``max_attempts`` tries (or at
   once for a permanent error: ``INVALID_ARGUMENT``, a message the service can never accept).

**Outage** (the notification service is down, not the message at fault): when a whole round fails with
``UNAVAILABLE`` or ``DEADLINE_EXCEEDED`` and nothing got through, the rows are handed back *without* counting
the try (``attempts`` unchanged, ``next_attempt_time`` pushed by the outage delay, ``last_error`` set) and
the worker probes with one message at a time, backing off, until one gets through. So an outage of any
length dead-letters nothing: the outbox grows and drains when the service is back. Only messages that fail
while the service answers others count tries towards ``max_attempts``.

A worker that dies between 1 and 3 (``kill -9``, a crashed host) loses nothing: its rows are still ``PENDING`` and
due again when the lease ends; whoever claims them sends them again with the same ``dedupe_key`` (the row's, fixed
when it was written, on every attempt) and the notification service acknowledges the repeat as a duplicate.
Failures are only recorded if the lease is still ours (``next_attempt_time`` what our last claim or beat set), so a
slow worker whose lease expired cannot overwrite the newer owner's state. Rows are deleted only by the retention
job (:mod:`services.notification.retention`), long after they were sent.

Why a renewed lease rather than claims tied to the worker's database session (an advisory lock, or a
``pg_stat_activity`` check of the claimer's backend)? Session liveness is only as prompt as PostgreSQL noticing a
dead peer: instant for ``kill -9`` on the same host, but up to the TCP keepalive time (hours by default) when the
worker's host or network dies, and meaningless behind a transaction-pooling proxy where sessions are shared. A
heartbeat lease bounds recovery by ``lease_seconds`` in every case, costs one small UPDATE per batch every
``heartbeat_seconds``, and needs nothing from the database but its clock.

All outbox times are the database's clock (it stamped ``next_attempt_time`` and ``create_time``); only the
acknowledgement time (``sent_time``, and so the lag) is this process's wall clock.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import grpc

from services.common import db, tracing
from services.common.logging import get_logger
from services.notification.client import Notifier
from services.notification.metrics import WorkerMetrics

__all__ = ["Claimed", "Outcome", "Relay", "RelayConfig", "backoff_delay"]

_log = get_logger("cowatch.notification.relay")

PERMANENT_CODES: Final = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
OUTAGE_CODES: Final = frozenset({grpc.StatusCode.UNAVAILABLE.name, grpc.StatusCode.DEADLINE_EXCEEDED.name})
MAX_ERROR_LENGTH: Final = 500


def backoff_delay(failures: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before the next try after ``failures`` (>= 1) failed ones: ``base * 2**(failures-1)`` capped at ``cap``,
    then jittered to a uniform value in [50 %, 100 %] of that, so workers that failed together spread out."""
    exponent = min(max(failures, 1) - 1, 62)
    ceiling = min(cap, base * (2.0**exponent))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


@dataclass(frozen=True, slots=True)
class RelayConfig:
    batch_size: int = 100
    send_concurrency: int = 64
    max_attempts: int = 10
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 300.0
    lease_seconds: float = 10.0
    heartbeat_seconds: float = 3.0
    acquire_timeout_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    dedupe_key: str
    template_id: str
    recipients: list[str]
    params: dict[str, Any]
    request_id: str
    attempts: int  # tries before this one
    create_time: datetime
    lease_until: datetime
    traceparent: str = ""  # of the request that wrote the row (tracing was on), else ""


@dataclass(frozen=True, slots=True)
class Round:
    """What one :meth:`Relay.run_once` did."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    outage: bool = False  # nothing got through, every failure said "unavailable": the service is down


@dataclass(frozen=True, slots=True)
class Outcome:
    row: Claimed
    ok: bool
    duplicate: bool = False
    code: str = ""
    error: str = ""
    permanent: bool = False
    acked_at: datetime | None = None


CLAIM = """
WITH due AS (
    SELECT id FROM notify.outbox
    WHERE state = 'PENDING' AND next_attempt_time <= now()
    ORDER BY next_attempt_time, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE notify.outbox o
SET next_attempt_time = now() + make_interval(secs => $2::float8)
FROM due
WHERE o.id = due.id
RETURNING o.id, o.dedupe_key, o.template_id, o.recipients, o.params, o.request_id, o.attempts, o.create_time,
          o.next_attempt_time, o.traceparent
"""

MARK_SENT = """
UPDATE notify.outbox o
SET state = 'SENT', sent_time = s.sent_time, attempts = o.attempts + 1, last_error = NULL
FROM unnest($1::bigint[], $2::timestamptz[]) AS s(id, sent_time)
WHERE o.id = s.id AND o.state <> 'SENT'
"""

MARK_FAILED = """
UPDATE notify.outbox o
SET attempts = o.attempts + 1,
    last_error = f.error,
    state = CASE WHEN f.dead THEN 'DEAD' ELSE 'PENDING' END,
    next_attempt_time = CASE WHEN f.dead THEN o.next_attempt_time ELSE now() + make_interval(secs => f.delay) END
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::float8[], $5::bool[]) AS f(id, lease, error, delay, dead)
WHERE o.id = f.id AND o.state = 'PENDING' AND o.next_attempt_time = f.lease
RETURNING o.id, o.state, o.attempts, o.next_attempt_time
"""

RELEASE = """
UPDATE notify.outbox o
SET last_error = f.error, next_attempt_time = now() + make_interval(secs => $4::float8)
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS f(id, lease, error)
WHERE o.id = f.id AND o.state = 'PENDING' AND o.next_attempt_time = f.lease
"""

RENEW = """
UPDATE notify.outbox o
SET next_attempt_time = now() + make_interval(secs => $3::float8)
FROM unnest($1::bigint[], $2::timestamptz[]) AS l(id, lease)
WHERE o.id = l.id AND o.state = 'PENDING' AND o.next_attempt_time = l.lease
RETURNING o.id, o.next_attempt_time
"""

NEXT_DUE_IN = """
SELECT extract(epoch FROM min(next_attempt_time) - now())::float8 FROM notify.outbox WHERE state = 'PENDING'
"""

PENDING_STATS = """
SELECT count(*) AS pending, extract(epoch FROM now() - min(create_time))::float8 AS oldest
FROM notify.outbox WHERE state = 'PENDING'
"""


def _lease(outcome: Outcome, leases: Mapping[int, datetime] | None) -> datetime:
    """The lease we hold on the outcome's row: the last beat's, else the claim's (a lost row keeps the claim's,
    which no longer matches, so nothing is written)."""
    if leases is None:
        return outcome.row.lease_until
    return leases.get(outcome.row.id, outcome.row.lease_until)


def _claimed(record: Any) -> Claimed:
    params = record["params"]
    return Claimed(
        id=record["id"],
        dedupe_key=record["dedupe_key"],
        template_id=record["template_id"],
        recipients=list(record["recipients"]),
        params=json.loads(params) if isinstance(params, str) else dict(params),
        request_id=record["request_id"] or "",
        attempts=record["attempts"],
        create_time=record["create_time"],
        lease_until=record["next_attempt_time"],
        traceparent=record["traceparent"] or "",
    )


class Relay:
    """Sends due outbox rows; safe to run in any number of processes at once."""

    def __init__(
        self,
        pool: db.Pool,
        notifier: Notifier,
        config: RelayConfig,
        metrics: WorkerMetrics,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._notifier = notifier
        self._config = config
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(config.send_concurrency)

    async def claim(self, limit: int | None = None) -> list[Claimed]:
        async with db.connection(self._pool, acquire_timeout=self._config.acquire_timeout_seconds) as conn:
            rows = await conn.fetch(CLAIM, limit or self._config.batch_size, self._config.lease_seconds)
        return [_claimed(r) for r in rows]

    async def run_once(self, *, limit: int | None = None, outage_delay: float = 1.0) -> Round:
        """Claim (up to ``limit``, default the batch size), send and record one batch.

        On an outage (see the module doc) the rows go back untouched but for ``last_error`` and a
        ``next_attempt_time`` ``outage_delay`` seconds ahead.
        """
        claimed = await self.claim(limit)
        if not claimed:
            return Round()
        leases = {row.id: row.lease_until for row in claimed}
        heartbeat = asyncio.create_task(self._heartbeat(leases), name="outbox-lease-heartbeat")
        try:
            outcomes = await asyncio.gather(*(self._send(row) for row in claimed))
        finally:
            heartbeat.cancel()
            # (a beat in flight finishes or is cancelled before we read the leases it may have moved)
            await asyncio.gather(heartbeat, return_exceptions=True)
        sent = sum(1 for o in outcomes if o.ok)
        if sent == 0 and all(o.code in OUTAGE_CODES for o in outcomes):
            await self.release(outcomes, outage_delay, leases)
            return Round(claimed=len(claimed), failed=len(claimed), outage=True)
        await self.record(outcomes, leases)
        return Round(claimed=len(claimed), sent=sent, failed=len(claimed) - sent)

    async def renew(self, leases: dict[int, datetime]) -> int:
        """Push the leases we still hold ``lease_seconds`` ahead; updates ``leases`` in place (a row whose lease
        someone else took over is dropped from it). Returns how many were renewed."""
        if not leases:
            return 0
        ids = list(leases)
        async with db.connection(self._pool, acquire_timeout=self._config.acquire_timeout_seconds) as conn:
            rows = await conn.fetch(RENEW, ids, [leases[i] for i in ids], self._config.lease_seconds)
        renewed = {r["id"]: r["next_attempt_time"] for r in rows}
        for i in ids:
            if i in renewed:
                leases[i] = renewed[i]
            else:
                del leases[i]
        return len(renewed)

    async def _heartbeat(self, leases: dict[int, datetime]) -> None:
        interval = self._config.heartbeat_seconds
        while leases:
            await asyncio.sleep(interval)
            try:
                await self.renew(leases)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: the leases may lapse; a re-send is then deduped
                _log.warning("outbox lease renewal failed", error=repr(exc)[:MAX_ERROR_LENGTH])

    async def release(
        self, outcomes: Sequence[Outcome], delay: float, leases: Mapping[int, datetime] | None = None
    ) -> None:
        """Hand rows back after an outage without counting the try."""
        async with db.connection(self._pool, acquire_timeout=self._config.acquire_timeout_seconds) as conn:
            await conn.execute(
                RELEASE,
                [o.row.id for o in outcomes],
                [_lease(o, leases) for o in outcomes],
                [o.error for o in outcomes],
                delay,
            )
        for o in outcomes:
            self._metrics.failed.labels(o.row.template_id, o.code).inc()

    async def _send(self, row: Claimed) -> Outcome:
        async with self._slots:
            try:
                # Tracing on: the delivery is a span of the trace of the request that wrote the row, and the Send
                # call under it carries that trace on to the notification service.
                with tracing.continued(
                    row.traceparent,
                    "outbox deliver",
                    {"messaging.system": "cowatch.outbox", "messaging.message.id": row.dedupe_key},
                ):
                    result = await self._notifier.send(
                        dedupe_key=row.dedupe_key,
                        recipients=row.recipients,
                        template_id=row.template_id,
                        params=row.params,
                        request_id=row.request_id or f"outbox-{row.id}",
                    )
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                return Outcome(
                    row,
                    ok=False,
                    code=code.name,
                    error=f"{code.name}: {exc.details() or ''}"[:MAX_ERROR_LENGTH],
                    permanent=code in PERMANENT_CODES,
                )
            except (TypeError, ValueError) as exc:  # the row cannot be turned into a request at all
                return Outcome(row, ok=False, code="BAD_MESSAGE", error=repr(exc)[:MAX_ERROR_LENGTH], permanent=True)
            except Exception as exc:
                return Outcome(row, ok=False, code=type(exc).__name__, error=repr(exc)[:MAX_ERROR_LENGTH])
            return Outcome(row, ok=True, duplicate=result.duplicate, acked_at=datetime.now(UTC))

    async def record(self, outcomes: Sequence[Outcome], leases: Mapping[int, datetime] | None = None) -> None:
        sent = [o for o in outcomes if o.ok]
        failed = [o for o in outcomes if not o.ok]
        cfg = self._config
        dead_flags = [o.permanent or o.row.attempts + 1 >= cfg.max_attempts for o in failed]
        delays = [
            0.0 if dead else self._backoff(o.row.attempts + 1) for o, dead in zip(failed, dead_flags, strict=True)
        ]
        async with db.connection(self._pool, acquire_timeout=cfg.acquire_timeout_seconds) as conn:
            if sent:
                await conn.execute(MARK_SENT, [o.row.id for o in sent], [o.acked_at for o in sent])
            updated: dict[int, Any] = {}
            if failed:
                rows = await conn.fetch(
                    MARK_FAILED,
                    [o.row.id for o in failed],
                    [_lease(o, leases) for o in failed],
                    [o.error for o in failed],
                    delays,
                    dead_flags,
                )
                updated = {r["id"]: r for r in rows}
        for o in sent:
            self._metrics.sent.labels(o.row.template_id, "true" if o.duplicate else "false").inc()
            if o.acked_at is not None:
                self._metrics.lag.observe(max(0.0, (o.acked_at - o.row.create_time).total_seconds()))
        for o, delay in zip(failed, delays, strict=True):
            self._metrics.failed.labels(o.row.template_id, o.code).inc()
            row = updated.get(o.row.id)
            if row is None:  # our lease had expired and someone else owns the row now
                _log.info("outbox send failed; lease lost", outbox_id=o.row.id, dedupe_key=o.row.dedupe_key)
                continue
            if row["state"] == "DEAD":
                self._metrics.dead.labels(o.row.template_id).inc()
                _log.error(
                    "outbox message dead-lettered",
                    outbox_id=o.row.id,
                    dedupe_key=o.row.dedupe_key,
                    template_id=o.row.template_id,
                    attempts=row["attempts"],
                    error=o.error,
                    permanent=o.permanent,
                )
            else:
                _log.warning(
                    "outbox send failed; will retry",
                    outbox_id=o.row.id,
                    dedupe_key=o.row.dedupe_key,
                    template_id=o.row.template_id,
                    attempts=row["attempts"],
                    retry_in_s=round(delay, 3),
                    error=o.error,
                )

    def _backoff(self, failures: int) -> float:
        cfg = self._config
        return backoff_delay(failures, base=cfg.backoff_base_seconds, cap=cfg.backoff_cap_seconds, rng=self._rng)

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest pending row is due (<= 0: now); ``None`` when nothing is pending."""
        async with db.connection(self._pool, acquire_timeout=self._config.acquire_timeout_seconds) as conn:
            value = await conn.fetchval(NEXT_DUE_IN)
        return None if value is None else float(value)

    async def refresh_gauges(self) -> None:
        async with db.connection(self._pool, acquire_timeout=self._config.acquire_timeout_seconds) as conn:
            row = await conn.fetchrow(PENDING_STATS)
        if row is not None:
            self._metrics.pending.set(row["pending"])
            self._metrics.oldest_pending.set(row["oldest"] or 0.0)
