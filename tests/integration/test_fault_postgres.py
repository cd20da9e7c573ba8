"""Postgres down (README, "Degradation"): RPCs fail fast with UNAVAILABLE inside their deadline, health
turns NOT_SERVING, both come back by themselves, no seat is oversold and no pool connection leaks.

Each test runs its own embedded PostgreSQL (never the shared server) and stops it.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.booking.app import BookingApp, BookingSettings
from services.common.app import ServiceApp
from services.common.clock import ManualClock
from services.common.server import RunningServer
from tests.support.api import new_caller, rich_error
from tests.support.db import create_migrated_database
from tests.support.factories import create_request
from tests.support.pg_process import RemotePostgres
from tests.support.servers import NOT_SERVING, SERVING, app_server, event_server, health, wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

DEADLINE = 5.0
FAST = 1.0  # an UNAVAILABLE answer takes at most this (the deadline is 5 s)
POOL = 6


@pytest.fixture
def remote_pg() -> Iterator[RemotePostgres]:
    """A private PostgreSQL, started and stopped from a helper process (see tests/support/pg_process.py)."""
    with RemotePostgres() as pg:
        yield pg


def fault_settings() -> dict[str, Any]:
    return {
        "db_pool_min_size": 2,
        "db_pool_max_size": POOL,
        "db_connect_timeout_seconds": 1.0,
        "db_acquire_timeout_seconds": 1.0,
    }


async def test_a_service_started_while_postgres_is_down_serves_once_it_is_up(remote_pg: RemotePostgres):
    pg = remote_pg
    _name, url = await create_migrated_database(pg.url)
    await asyncio.to_thread(pg.stop)
    async with event_server(url, **fault_settings()) as (running, events):  # starting must not fail
        assert await health(running.port) == NOT_SERVING
        started = time.perf_counter()
        try:
            await events.GetEvent(service_pb2.GetEventRequest(name=f"events/{uuid.uuid4()}"), timeout=DEADLINE)
        except grpc.aio.AioRpcError as exc:
            err = rich_error(exc)
            assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
        else:
            raise AssertionError("answered without a database")
        assert time.perf_counter() - started < FAST

        await asyncio.to_thread(pg.start)
        await wait_until(lambda: _is(running.port, SERVING), within=10)
        host = new_caller()
        created = await events.CreateEvent(create_request(datetime.now(UTC)), metadata=host.metadata, timeout=5)
        assert (await events.GetEvent(service_pb2.GetEventRequest(name=created.name), timeout=5)).name == created.name


def all_idle(pool: asyncpg.Pool) -> bool:
    return bool(pool.get_idle_size() == pool.get_size())


def pool_of(running: RunningServer) -> asyncpg.Pool:
    app = running.app
    pool = app.pool if isinstance(app, ServiceApp) else None
    assert pool is not None
    return pool


async def _is(port: int, status: int) -> bool:
    try:
        return await health(port) == status
    except grpc.aio.AioRpcError:
        return False


@dataclass
class Outcome:
    started: float
    seconds: float
    kind: str
    code: str
    reason: str = ""


@dataclass
class Traffic:
    events: event_grpc.EventServiceAsyncStub
    bookings: booking_grpc.BookingServiceAsyncStub
    names: list[str]
    city: str
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            name = self.names[(n * 7 + i) % len(self.names)]
            kind = ("get", "list", "book")[(n + i) % 3]
            started = time.perf_counter()
            outcome = Outcome(started, 0.0, kind, "OK")
            try:
                if kind == "get":
                    await self.events.GetEvent(service_pb2.GetEventRequest(name=name), timeout=DEADLINE)
                elif kind == "list":
                    await self.events.ListEvents(service_pb2.ListEventsRequest(city=self.city), timeout=DEADLINE)
                else:
                    guest = new_caller()
                    request = booking_service_pb2.CreateBookingRequest(
                        booking=booking_pb2.Booking(event=name, seats=1), request_id=str(uuid.uuid4())
                    )
                    await self.bookings.CreateBooking(request, metadata=guest.metadata, timeout=DEADLINE)
            except grpc.aio.AioRpcError as exc:
                err = rich_error(exc)
                outcome.code, outcome.reason = err.code.name, err.reason
            outcome.seconds = time.perf_counter() - started
            self.outcomes.append(outcome)
            if outcome.code == "UNAVAILABLE":
                await asyncio.sleep(0.02)  # a client backing off a little (RetryInfo says 1 s; we want samples)


async def record_health(port: int, timeline: list[tuple[float, int]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            status = await health(port)
        except grpc.aio.AioRpcError:
            status = -1
        timeline.append((time.perf_counter(), status))
        await asyncio.sleep(0.1)


def first_after(timeline: list[tuple[float, int]], since: float, status: int) -> float:
    return next(t for t, s in timeline if t >= since and s == status) - since


async def test_postgres_stopped_for_20_s_under_load(remote_pg: RemotePostgres):
    pg = remote_pg
    _name, url = await create_migrated_database(pg.url)
    clock = ManualClock(datetime.now(UTC))
    async with (
        event_server(url, clock=clock, **fault_settings()) as (event_running, events),
        app_server(BookingApp, BookingSettings, url, clock=clock, **fault_settings()) as (booking_running, channel),
    ):
        host = new_caller()
        city = f"Pgfail-{uuid.uuid4().hex[:8]}"
        names = []
        for d, capacity in enumerate((3, 3, 3, 3, 1000, 1000, 1000, 1000)):  # some sell out, some never do
            created = await events.CreateEvent(
                create_request(clock.now(), city=city, capacity=capacity, start_in=timedelta(days=1, hours=3 * d)),
                metadata=host.metadata,
            )
            names.append(created.name)
        traffic = Traffic(events, booking_grpc.BookingServiceStub(channel), names, city)
        timeline: list[tuple[float, int]] = []
        tasks = [asyncio.create_task(traffic.worker(n)) for n in range(12)]
        tasks.append(asyncio.create_task(record_health(event_running.port, timeline, traffic.stop)))

        await asyncio.sleep(2.0)
        stopped = time.perf_counter()
        await asyncio.to_thread(pg.stop)
        await asyncio.sleep(20.0)
        restarted = time.perf_counter()
        await asyncio.to_thread(pg.start)
        await wait_until(lambda: _is(event_running.port, SERVING), within=15)
        await wait_until(lambda: _is(booking_running.port, SERVING), within=15)
        recovered = time.perf_counter()
        await asyncio.sleep(2.0)
        traffic.stop.set()
        await asyncio.gather(*tasks)

        outcomes = traffic.outcomes
        codes = Counter(o.code for o in outcomes)
        assert set(codes) <= {"OK", "UNAVAILABLE", "FAILED_PRECONDITION"}, codes  # never DEADLINE_EXCEEDED
        assert {o.reason for o in outcomes if o.code == "FAILED_PRECONDITION"} <= {"EVENT_SOLD_OUT"}
        unavailable = [o for o in outcomes if o.code == "UNAVAILABLE"]
        assert len(unavailable) > 200
        assert {o.reason for o in unavailable} <= {"DATABASE_UNAVAILABLE", "DATABASE_TIMEOUT"}
        assert max(o.seconds for o in unavailable) < FAST  # fast, well inside the 5 s deadline
        assert all(stopped - 0.5 <= o.started <= recovered for o in unavailable)
        assert all(o.code != "UNAVAILABLE" for o in outcomes if o.started < stopped - 0.5)
        # health followed Postgres both ways, by itself
        assert first_after(timeline, stopped, NOT_SERVING) < 2.0
        assert first_after(timeline, restarted, SERVING) < 5.0
        after = [o for o in outcomes if o.started > recovered + 0.5]
        assert after and all(o.code in ("OK", "FAILED_PRECONDITION") for o in after)
        assert any(o.kind == "book" and o.code == "OK" for o in after)

        # no connection leaked: nothing still checked out, nothing beyond the pool's size
        for running in (event_running, booking_running):
            pool = pool_of(running)
            assert pool.get_size() <= POOL
            await wait_until(functools.partial(all_idle, pool), within=5)

    conn = await asyncpg.connect(url)
    try:
        # no seat oversold, and seats_taken agrees with the bookings, whatever the outage cut short
        rows = await conn.fetch(
            """
            SELECT e.capacity, e.seats_taken, coalesce(sum(b.seats) FILTER (WHERE b.state = 'CONFIRMED'), 0) AS booked
            FROM event.events e LEFT JOIN booking.bookings b ON b.event_id = e.id
            WHERE e.place_city = $1 GROUP BY e.id
            """,
            city,
        )
        assert len(rows) == 8
        assert all(r["seats_taken"] == r["booked"] <= r["capacity"] for r in rows)
        assert sum(r["seats_taken"] == r["capacity"] for r in rows) == 4  # the small ones sold out
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'cowatch-%' "
            "AND datname = current_database()"
        )
        assert left == 0  # the servers closed their pools
    finally:
        await conn.close()
