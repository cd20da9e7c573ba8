"""The notification worker process: relays the outbox, dispatches due reminders, deletes old rows.

``python -m services.notification.worker`` (settings: :class:`~services.notification.settings.WorkerSettings`).

Four loops share one pool:

* **relay** (:mod:`services.notification.relay`): woken at once by ``LISTEN cowatch_outbox`` (the outbox's
  insert trigger notifies at commit; a connection outside the pool, to ``COWATCH_DATABASE_DIRECT_URL`` when set:
  behind PgBouncer in transaction pooling it must reach PostgreSQL directly), else by the earliest retry coming
  due, else every ``poll_interval_seconds`` (the fallback when a notification is lost, e.g. while the listening
  connection reconnects). While batches come back full it keeps going without waiting.
* **reminders** (:mod:`services.notification.reminders`): every ``poll_interval_seconds`` against the clock;
  the outbox rows it writes wake the relay through the same trigger.
* **retention** (:mod:`services.notification.retention`): every ``retention_interval_seconds``, deletes sent and
  dead outbox rows and request ids past their retention, in small batches.
* **periodic jobs** of other domains, handed in by the process wiring (:func:`serve`): every
  ``jobs_interval_seconds`` (and on :meth:`Worker.wake`) each job's ``run_once()``. Today one: the review
  domain's reveal of reviews whose window has closed (:mod:`services.review.reveals`).
* **gauges**: pending count and oldest pending age for Prometheus.

Any number of workers may run against one database (claims use ``SKIP LOCKED``). SIGTERM/SIGINT: stop claiming,
finish the batch in hand (at most ``shutdown_grace_seconds``), exit 0. A second signal stops at once; rows in
flight are then re-sent by whichever worker comes next once their lease lapses — ``lease_seconds`` after the
last heartbeat (same dedupe key).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, NoReturn, Protocol, TypeVar

import asyncpg
from prometheus_client import start_http_server

from services.common import db, tracing
from services.common.cache import Cache, cache_from_settings
from services.common.clock import Clock, SystemClock
from services.common.logging import configure_logging, get_logger
from services.common.settings import TracingSettings, load_settings
from services.notification.client import NotificationClient, Notifier
from services.notification.metrics import WorkerMetrics
from services.notification.relay import Relay, RelayConfig, backoff_delay
from services.notification.reminders import ReminderDispatcher
from services.notification.retention import Retention, RetentionConfig
from services.notification.settings import WorkerSettings
from services.review.app import reveal_job

__all__ = ["OUTBOX_CHANNEL", "Worker", "main", "serve"]

OUTBOX_CHANNEL = "cowatch_outbox"
MIN_WAIT_SECONDS = 0.005

_log = get_logger("cowatch.notification.worker")

R = TypeVar("R")


class PeriodicJob(Protocol):
    """Work another domain wants done on a schedule, in its own transactions (``SKIP LOCKED`` claims, so any
    number of workers may run it)."""

    name: str

    async def run_once(self) -> object: ...


JobFactory = Callable[[db.Pool, Clock, Cache], PeriodicJob]
"""Builds a job from the worker's pool, clock and cache (``COWATCH_REDIS_URL``; they exist once it started)."""


class Worker:
    """``await start()``, ``await run()`` (returns after ``stop()``), ``await close()``.

    ``notifier`` and ``clock`` are injectable for tests; by default the worker opens its own gRPC channel
    (:class:`NotificationClient`) and uses the system clock.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        metrics: WorkerMetrics | None = None,
        rng: random.Random | None = None,
        jobs: Sequence[JobFactory] = (),
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = metrics or WorkerMetrics()
        self._notifier = notifier
        self._client: NotificationClient | None = None
        self._rng = rng
        self._pool: db.Pool | None = None
        self._relay: Relay | None = None
        self._reminders: ReminderDispatcher | None = None
        self._retention: Retention | None = None
        self._job_factories = tuple(jobs)
        self._jobs: list[PeriodicJob] = []
        self._cache: Cache | None = None
        self._jobs_wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._reminder_wake = asyncio.Event()
        self._listening = asyncio.Event()
        self._metrics_server: Any = None

    # --------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        s = self.settings
        self._pool = await self._create_pool()
        if self._notifier is None:
            self._client = NotificationClient(
                s.notification_address,
                timeout_seconds=s.notification_timeout_seconds,
                retry_attempts=s.notification_retry_attempts,
                tls=s.notification_tls,
            )
            self._notifier = self._client
        config = RelayConfig(
            batch_size=s.batch_size,
            send_concurrency=s.send_concurrency,
            max_attempts=s.max_attempts,
            backoff_base_seconds=s.backoff_base_seconds,
            backoff_cap_seconds=s.backoff_cap_seconds,
            lease_seconds=s.lease_seconds,
            heartbeat_seconds=s.heartbeat_seconds,
            acquire_timeout_seconds=s.db_acquire_timeout_seconds,
        )
        self._relay = Relay(self._pool, self._notifier, config, self.metrics, rng=self._rng)
        self._reminders = ReminderDispatcher(
            self._pool,
            self.clock,
            self.metrics,
            public_base_url=s.public_base_url,
            batch_size=s.reminder_batch_size,
            acquire_timeout_seconds=s.db_acquire_timeout_seconds,
        )
        self._retention = Retention(
            self._pool,
            self.clock,
            RetentionConfig(
                outbox_sent=timedelta(seconds=s.outbox_sent_retention_seconds),
                outbox_dead=timedelta(seconds=s.outbox_dead_retention_seconds),
                request_ids=timedelta(seconds=s.idempotency_retention_seconds),
                batch_size=s.retention_batch_size,
                acquire_timeout_seconds=s.db_acquire_timeout_seconds,
            ),
            self.metrics,
        )
        if self._job_factories:
            self._cache = cache_from_settings(s)
            self._jobs = [make(self._pool, self.clock, self._cache) for make in self._job_factories]
        if s.metrics_port:
            self._metrics_server, _ = start_http_server(s.metrics_port, s.metrics_host, registry=self.metrics.registry)
        _log.info(
            "worker started",
            notification_service=s.notification_address,
            batch_size=s.batch_size,
            max_attempts=s.max_attempts,
            metrics_port=s.metrics_port,
        )

    async def _create_pool(self) -> db.Pool:
        """The worker's pool. Postgres down at start is not fatal: the pool then starts empty and the loops keep
        retrying (the same policy as ``services.common.db.create_pool``, which takes server settings)."""
        s = self.settings
        options: dict[str, Any] = {
            "max_size": s.db_pool_max_size,
            "command_timeout": s.db_command_timeout_seconds,
            "timeout": s.db_connect_timeout_seconds,
            "max_inactive_connection_lifetime": 300.0,
            "statement_cache_size": s.db_statement_cache_size,
            "server_settings": {"application_name": s.service_name},
        }
        try:
            pool: db.Pool = await asyncpg.create_pool(s.database_url, min_size=s.db_pool_min_size, **options)
        except (OSError, asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.CannotConnectNowError) as exc:
            _log.warning("postgres unavailable at start: retrying in the background", error=type(exc).__name__)
            pool = await asyncpg.create_pool(s.database_url, min_size=0, **options)
        return pool

    def stop(self) -> None:
        """Ask the loops to finish what they hold and return (``run()`` then returns)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wake(self) -> None:
        """Look for due outbox rows, reminders and periodic work now (tests call this after moving the clock)."""
        self._outbox_wake.set()
        self._reminder_wake.set()
        self._jobs_wake.set()

    async def wait_listening(self, within: float = 5.0) -> None:
        """Wait until LISTEN is in place (tests that count on NOTIFY wake-ups)."""
        async with asyncio.timeout(within):
            await self._listening.wait()

    async def run(self) -> None:
        if self._relay is None or self._reminders is None or self._retention is None:
            raise RuntimeError("Worker.start() first")
        loops = [
            asyncio.create_task(self._relay_loop(self._relay), name="outbox-relay"),
            asyncio.create_task(self._reminder_loop(self._reminders), name="reminders"),
            asyncio.create_task(self._retention_loop(self._retention), name="retention"),
            *(asyncio.create_task(self._job_loop(job), name=job.name) for job in self._jobs),
            asyncio.create_task(self._gauge_loop(self._relay), name="outbox-gauges"),
        ]
        listener = asyncio.create_task(self._listen_loop(), name="outbox-listen")
        try:
            await asyncio.gather(*loops)
        finally:
            for task in (*loops, listener):
                task.cancel()
            await asyncio.gather(*loops, listener, return_exceptions=True)

    async def close(self) -> None:
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.shutdown)
            self._metrics_server = None
        if self._client is not None:
            await self._client.close()
        if self._cache is not None:
            await self._cache.aclose()
            self._cache = None
        if self._pool is not None:
            await db.close_pool(self._pool)
            self._pool = None

    # --------------------------------------------------------------------------------------- loops

    async def _wait(self, event: asyncio.Event, seconds: float) -> None:
        """Sleep up to ``seconds``, less if ``event`` or stop is set."""
        if event.is_set() or self._stopping.is_set():
            return
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=max(seconds, MIN_WAIT_SECONDS), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _guarded(self, what: str, step: Awaitable[R]) -> R | None:
        try:
            return await step
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Postgres down, pool exhausted...: keep trying at the poll interval
            _log.warning(f"{what} failed; retrying", error=repr(exc)[:300])
            return None

    def _outage_delay(self, rounds: int) -> float:
        s = self.settings
        cap = min(s.backoff_cap_seconds, s.outage_probe_max_seconds)
        return backoff_delay(rounds, base=min(s.backoff_base_seconds, cap), cap=cap)

    async def _relay_loop(self, relay: Relay) -> None:
        poll = self.settings.poll_interval_seconds
        outage_rounds = 0
        while not self._stopping.is_set():
            self._outbox_wake.clear()
            delay = self._outage_delay(outage_rounds + 1)
            # In an outage, probe with one message at a time instead of churning whole batches.
            limit = 1 if outage_rounds else None
            result = await self._guarded("outbox relay", relay.run_once(limit=limit, outage_delay=delay))
            if result is None:
                await self._wait(self._stopping, poll)
                continue
            if result.outage:
                if outage_rounds == 0:
                    self.metrics.service_up.set(0)
                    _log.warning(
                        "notification service unavailable: holding messages in the outbox, probing",
                        notification_service=self.settings.notification_address,
                    )
                outage_rounds += 1
                await self._wait(self._stopping, delay)
                continue
            if outage_rounds and result.sent:
                _log.info("notification service is back", after_probes=outage_rounds)
                outage_rounds = 0
            if result.sent:
                self.metrics.service_up.set(1)
            if result.claimed >= self.settings.batch_size:
                continue  # more may be due right now
            timeout = poll
            with contextlib.suppress(Exception):
                due_in = await relay.next_due_in()
                if due_in is not None:
                    timeout = min(poll, due_in)
            await self._wait(self._outbox_wake, timeout)

    async def _reminder_loop(self, reminders: ReminderDispatcher) -> None:
        poll = self.settings.poll_interval_seconds
        while not self._stopping.is_set():
            self._reminder_wake.clear()
            settled = await self._guarded("reminder dispatch", reminders.run_once())
            if settled is not None and settled >= self.settings.reminder_batch_size:
                continue
            await self._wait(self._reminder_wake, poll)

    async def _retention_loop(self, retention: Retention) -> None:
        while not self._stopping.is_set():
            await self._guarded("retention", retention.run_once())
            await self._wait(self._stopping, self.settings.retention_interval_seconds)

    async def _job_loop(self, job: PeriodicJob) -> None:
        while not self._stopping.is_set():
            self._jobs_wake.clear()
            await self._guarded(job.name, job.run_once())
            await self._wait(self._jobs_wake, self.settings.jobs_interval_seconds)

    async def _gauge_loop(self, relay: Relay) -> None:
        interval = max(1.0, min(self.settings.poll_interval_seconds, 15.0))
        while not self._stopping.is_set():
            with contextlib.suppress(Exception):
                await relay.refresh_gauges()
            await self._wait(self._stopping, interval)

    def _on_notify(self, *_: object) -> None:
        self._outbox_wake.set()

    async def _listen_loop(self) -> None:
        s = self.settings
        while not self._stopping.is_set():
            conn: asyncpg.Connection[asyncpg.Record] | None = None
            try:
                # A session of its own, never one through PgBouncer in transaction pooling: there LISTEN would
                # register on whichever server connection ran it, which then serves other clients, and PgBouncer
                # drops a notification arriving on a server connection no client holds.
                conn = await asyncpg.connect(
                    s.listen_url,
                    timeout=s.db_connect_timeout_seconds,
                    server_settings={"application_name": f"{s.service_name}-listen"},
                )
                await conn.add_listener(OUTBOX_CHANNEL, self._on_notify)
                self._listening.set()
                self._outbox_wake.set()  # whatever was committed while we were not listening
                while not self._stopping.is_set() and not conn.is_closed():
                    await self._wait(self._stopping, s.poll_interval_seconds)
                if conn.is_closed():
                    _log.warning("outbox listener connection lost; polling until it is back")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("outbox listener unavailable; polling", error=repr(exc)[:300])
            finally:
                self._listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2.0)
            await self._wait(self._stopping, s.poll_interval_seconds)


def default_jobs(settings: WorkerSettings) -> list[JobFactory]:
    """The other domains' periodic jobs this process runs (process wiring: the one import of another domain).
    Their cache invalidations go to the services' Redis (``COWATCH_REDIS_URL``, same key prefix)."""

    def reveals(pool: db.Pool, clock: Clock, cache: Cache) -> PeriodicJob:
        return reveal_job(pool, clock, cache, settings.public_base_url)

    return [reveals]


async def serve(
    settings: WorkerSettings,
    *,
    clock: Clock | None = None,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT),
) -> int:
    """Run a worker until a stop signal; returns the exit code."""
    worker = Worker(settings, clock=clock, jobs=default_jobs(settings))
    try:
        await worker.start()
    except Exception:
        _log.exception("worker startup failed")
        await worker.close()
        return 1
    loop = asyncio.get_running_loop()
    run_task = asyncio.create_task(worker.run(), name="worker")

    def on_signal(sig: signal.Signals) -> None:
        if not worker.stopping:
            _log.info("shutdown requested: finishing the current batch", signal=sig.name)
            worker.stop()
            loop.call_later(settings.shutdown_grace_seconds, run_task.cancel)
        else:
            _log.warning("second signal: stopping now", signal=sig.name)
            run_task.cancel()

    for sig in stop_signals:
        loop.add_signal_handler(sig, on_signal, sig)
    code = 0
    try:
        await run_task
    except asyncio.CancelledError:
        code = 0 if worker.stopping else 1
    finally:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
        await worker.close()
    _log.info("worker stopped")
    return code


def main() -> NoReturn:
    settings = load_settings(WorkerSettings)
    configure_logging(level=settings.log_level, json=settings.log_json, cache_loggers=True)
    tracing.configure(settings.service_name, load_settings(TracingSettings))
    try:
        code = asyncio.run(serve(settings))
    finally:
        tracing.shutdown()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
