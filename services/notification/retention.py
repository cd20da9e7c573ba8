"""Retention: the worker deletes what it no longer needs, so addresses, invite links and request ids don't stay
forever.

* ``notify.outbox`` rows ``SENT`` more than ``outbox_sent_retention_seconds`` ago (default 7 days: long enough
  to answer "did the guest get the mail?"), and ``DEAD`` rows written more than ``outbox_dead_retention_seconds``
  ago (default 30 days: time for an operator to look at a dead letter and replay it). A message's params hold
  what its mail shows (the street address for guests, the event link), so they go with the row.
* ``idem.requests`` (AIP-155 request ids) older than ``idempotency_retention_seconds`` (default 7 days). A key
  must outlive every retry of its request, or the retry would run again (a second booking): our clients retry
  within a call's deadline (seconds), but an offline client replays a queued write when it is back online —
  a week covers a long weekend offline with margin, at one small row per write. Never below one hour.

Each run deletes in batches of ``retention_batch_size`` rows, one short statement (its own transaction) per
batch, so no long transaction holds locks or bloats WAL, and stops when a batch comes back short (or after
``MAX_BATCHES_PER_RUN``; the next run continues). Rows are picked ``FOR UPDATE SKIP LOCKED``: several worker
replicas purge side by side without waiting on each other or deleting the same row twice.

Cutoffs are taken from the injected :class:`~services.common.clock.Clock`, so tests move time instead of
waiting a week.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from services.common import db
from services.common.clock import Clock
from services.common.logging import get_logger
from services.notification.metrics import WorkerMetrics

__all__ = ["Retention", "RetentionConfig", "RetentionRun"]

_log = get_logger("cowatch.notification.retention")

MAX_BATCHES_PER_RUN: Final = 100

PURGE_SENT = """
DELETE FROM notify.outbox WHERE id IN (
    SELECT id FROM notify.outbox WHERE state = 'SENT' AND sent_time < $1
    ORDER BY sent_time LIMIT $2 FOR UPDATE SKIP LOCKED
)
"""

PURGE_DEAD = """
DELETE FROM notify.outbox WHERE id IN (
    SELECT id FROM notify.outbox WHERE state = 'DEAD' AND create_time < $1
    ORDER BY create_time LIMIT $2 FOR UPDATE SKIP LOCKED
)
"""

# idem.requests has a composite key: rows are named by ctid, which is stable within one statement.
PURGE_REQUEST_IDS = """
DELETE FROM idem.requests WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idem.requests WHERE create_time < $1
    ORDER BY create_time LIMIT $2 FOR UPDATE SKIP LOCKED
))
"""


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    outbox_sent: timedelta = timedelta(days=7)
    outbox_dead: timedelta = timedelta(days=30)
    request_ids: timedelta = timedelta(days=7)
    batch_size: int = 500
    acquire_timeout_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class RetentionRun:
    """Rows deleted by one :meth:`Retention.run_once`."""

    outbox_sent: int = 0
    outbox_dead: int = 0
    request_ids: int = 0

    @property
    def total(self) -> int:
        return self.outbox_sent + self.outbox_dead + self.request_ids


class Retention:
    def __init__(self, pool: db.Pool, clock: Clock, config: RetentionConfig, metrics: WorkerMetrics) -> None:
        self._pool = pool
        self._clock = clock
        self._config = config
        self._metrics = metrics

    async def _purge(self, statement: str, cutoff: datetime) -> int:
        deleted = 0
        for _ in range(MAX_BATCHES_PER_RUN):
            async with db.connection(self._pool, acquire_timeout=self._config.acquire_timeout_seconds) as conn:
                status = await conn.execute(statement, cutoff, self._config.batch_size)
            n = int(status.rsplit(" ", 1)[-1])  # "DELETE n"
            deleted += n
            if n < self._config.batch_size:
                break
        return deleted

    async def run_once(self) -> RetentionRun:
        now = self._clock.now()
        cfg = self._config
        run = RetentionRun(
            outbox_sent=await self._purge(PURGE_SENT, now - cfg.outbox_sent),
            outbox_dead=await self._purge(PURGE_DEAD, now - cfg.outbox_dead),
            request_ids=await self._purge(PURGE_REQUEST_IDS, now - cfg.request_ids),
        )
        for what in ("outbox_sent", "outbox_dead", "request_ids"):
            self._metrics.purged.labels(what).inc(getattr(run, what))
        if run.total:
            _log.info(
                "retention: old rows deleted",
                outbox_sent=run.outbox_sent,
                outbox_dead=run.outbox_dead,
                request_ids=run.request_ids,
            )
        return run
