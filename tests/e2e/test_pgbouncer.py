"""cowatch behind a real PgBouncer (Debian's, transaction pooling) in front of a real PostgreSQL.

Two replicas of each service (event, booking, review) and the worker run as processes whose
``COWATCH_DATABASE_URL`` is PgBouncer, with ``COWATCH_DB_STATEMENT_CACHE_SIZE=0`` (Debian bookworm ships PgBouncer
1.18, before ``max_prepared_statements``). The worker's LISTEN goes to PostgreSQL directly
(``COWATCH_DATABASE_DIRECT_URL``); migrations ran directly too, before anything started. Then:

* the booking walk-through over gRPC, each step on the other replica than the one before (a write and its
  idempotent replay, reads after writes, cancel, a held event's reviews revealed pairwise);
* a hot-event burst: 300 guests at once for 50 seats over both booking replicas → exactly 50 booked, 0 oversold,
  while PostgreSQL sees no more server connections than PgBouncer's pools allow (many more clients than that);
* the worker: it holds exactly one connection to PostgreSQL (the LISTEN session, its own ``application_name``),
  every other one goes to PgBouncer, whose ``SHOW STATS`` counts the worker's transactions under its own alias;
  with ``COWATCH_POLL_INTERVAL_SECONDS`` at an hour, the walk-through's mails are relayed within seconds — only the
  NOTIFY reaching that LISTEN session can wake the relay that fast.

No Redis: every read reaches PostgreSQL, through PgBouncer.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import asyncpg
import grpc
import psutil
import pytest
import pytest_asyncio
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from cowatch.review.v1 import service_pb2 as review_service_pb2
from cowatch.review.v1 import service_pb2_grpc as review_grpc

from services.dev.migrate import drop_database
from tests.chaos.stack import StandinProcess, WorkerProcess
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER, Caller, new_caller, rich_error
from tests.support.bookings import book, cancel, outbox_for, seat_counts, uid
from tests.support.db import create_migrated_database
from tests.support.envoy import ServiceProcess
from tests.support.factories import create_request
from tests.support.pgbouncer import PgBouncer
from tests.support.reviews import GUEST, HOST, review_request

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

APP_ALIAS: Final = "cowatch_app"
WORKER_ALIAS: Final = "cowatch_worker"
POOL_SIZE: Final = 4
"""Server connections per PgBouncer alias: far fewer than the services' clients (6 processes × up to 10)."""
OBSERVER: Final = "cowatch-pgbouncer-test"
LISTEN_APP: Final = "cowatch-notification-worker-listen"
HOT_SEATS: Final = 50
HOT_GUESTS: Final = 300
RELAY_WITHIN: Final = 30.0
"""Seconds the walk-through's mails may take: generous for a loaded box, and nothing like the one-hour poll."""

SERVICES: Final = {
    "event": ("services.event", "cowatch.event.v1.EventService"),
    "booking": ("services.booking", "cowatch.booking.v1.BookingService"),
    "review": ("services.review", "cowatch.review.v1.ReviewService"),
}
T = TypeVar("T")


@dataclass
class Stack:
    database: str
    pool: asyncpg.Pool
    """Direct to PostgreSQL (application_name OBSERVER): what the test checks with, never the services' path."""
    bouncer: PgBouncer
    replicas: dict[str, list[ServiceProcess]]
    worker: WorkerProcess
    standin: StandinProcess
    channels: dict[str, list[grpc.aio.Channel]]
    """Per service kind, one channel per replica."""

    def processes(self) -> list[Any]:
        return [*itertools.chain.from_iterable(self.replicas.values()), self.worker, self.standin, self.bouncer]

    def check_running(self) -> None:
        for process in self.processes():
            process.check_running()

    def diagnostics(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail(15)}" for p in self.processes())


def alternating(stack: Stack, kind: str, stub_class: Callable[[grpc.aio.Channel], T]) -> Callable[[], T]:
    """A stub of ``kind`` per call, the replicas in turn: each call goes to the other replica than the last."""
    stubs = itertools.cycle([stub_class(channel) for channel in stack.channels[kind]])
    return lambda: next(stubs)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pgbouncer-e2e")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(pg_server_url: str, workdir: Path) -> AsyncIterator[Stack]:
    name, direct_url = await create_migrated_database(pg_server_url)  # migrations: directly, never via PgBouncer
    started: list[Any] = []
    channels: dict[str, list[grpc.aio.Channel]] = {}
    pool: asyncpg.Pool | None = None
    try:
        bouncer = PgBouncer(pg_server_url, {APP_ALIAS: name, WORKER_ALIAS: name}, workdir, pool_size=POOL_SIZE)
        started.append(bouncer.start())
        base = {k: v for k, v in os.environ.items() if not k.startswith("COWATCH_") and k not in ("REDIS_URL",)}
        common = {**base, "COWATCH_LOG_LEVEL": "WARNING", "COWATCH_DB_STATEMENT_CACHE_SIZE": "0"}
        service_env = {
            **common,
            "COWATCH_DATABASE_URL": bouncer.url(APP_ALIAS),
            "COWATCH_JWT_ISSUER": ISSUER,
            "COWATCH_JWT_AUDIENCE": AUDIENCE,
            "COWATCH_JWT_HS256_SECRET": HS256_SECRET,
            "COWATCH_PUBLIC_BASE_URL": "https://cowatch.test",
            "COWATCH_SHUTDOWN_GRACE_SECONDS": "1",
            "COWATCH_DB_POOL_MAX_SIZE": "10",
        }
        standin = StandinProcess(common, workdir)
        worker = WorkerProcess(
            {
                **common,
                "COWATCH_DATABASE_URL": bouncer.url(WORKER_ALIAS),
                "COWATCH_DATABASE_DIRECT_URL": direct_url,
                "COWATCH_NOTIFICATION_ADDRESS": standin.target,
                # An hour: only a NOTIFY on the LISTEN session wakes the relay within the test.
                "COWATCH_POLL_INTERVAL_SECONDS": "3600",
                "COWATCH_SHUTDOWN_GRACE_SECONDS": "2",
                "PYTHONUNBUFFERED": "1",
            },
            workdir,
        )
        replicas = {
            kind: [ServiceProcess(f"{kind}-{i}", module, health, service_env, workdir) for i in (1, 2)]
            for kind, (module, health) in SERVICES.items()
        }
        services = list(itertools.chain.from_iterable(replicas.values()))
        for process in (standin, *services):
            started.append(process.start())
        await asyncio.to_thread(standin.wait_serving)
        for service in services:
            await asyncio.to_thread(service.wait_serving, 60)
        started.append(worker.start())
        pool = await asyncpg.create_pool(
            direct_url, min_size=1, max_size=4, server_settings={"application_name": OBSERVER}
        )
        channels = {
            kind: [grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in processes]
            for kind, processes in replicas.items()
        }
        stack = Stack(name, pool, bouncer, replicas, worker, standin, channels)
        await worker_idle(stack)
        yield stack
    finally:
        for channel in itertools.chain.from_iterable(channels.values()):
            await channel.close()
        if pool is not None:
            await pool.close()
        # every process at once, PgBouncer last (the others' pools close through it)
        clients = [p for p in started if not isinstance(p, PgBouncer)]
        await asyncio.gather(*(asyncio.to_thread(p.stop, 10) for p in clients))
        for process in started:
            if isinstance(process, PgBouncer):
                await asyncio.to_thread(process.stop, 10)
        await drop_database(pg_server_url, name)


async def wait_for(check: Callable[[], Awaitable[bool]], within: float, what: str, stack: Stack) -> float:
    """Poll ``await check()`` until truthy; the seconds it took. Fails with the processes' logs."""
    started = time.monotonic()
    while not await check():
        stack.check_running()
        if time.monotonic() - started > within:
            raise AssertionError(f"{what}: not within {within:.0f}s\n{stack.diagnostics()}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def worker_idle(stack: Stack, quiet: float = 1.5, within: float = 60.0) -> None:
    """Until the worker has started and gone quiet: no transaction of its alias for ``quiet`` seconds. From then
    on its relay waits for a NOTIFY (or the one-hour poll), so nothing else explains a prompt delivery; its other
    loops (gauges every 15 s, jobs every 60 s) never wake the relay."""
    deadline = time.monotonic() + within
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        stack.check_running()
        count = stack.bouncer.stats(WORKER_ALIAS).get("total_xact_count", 0)
        if count != last:
            last, since = count, time.monotonic()
        elif count > 0 and time.monotonic() - since >= quiet:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the worker did not start and settle within {within:.0f}s\n{stack.diagnostics()}")


async def test_booking_walkthrough_alternating_replicas_through_pgbouncer(stack: Stack) -> None:
    events = alternating(stack, "event", event_grpc.EventServiceStub)
    bookings = alternating(stack, "booking", booking_grpc.BookingServiceStub)
    reviews = alternating(stack, "review", review_grpc.ReviewServiceStub)
    host, guest = new_caller("Host"), new_caller("Guest")
    now = datetime.now(UTC)
    xacts_before = stack.bouncer.stats(APP_ALIAS).get("total_xact_count", 0)

    event = await events().CreateEvent(create_request(now, capacity=6, city="Pgbouncerville"), metadata=host.metadata)
    listed = await events().ListEvents(event_service_pb2.ListEventsRequest(city="Pgbouncerville", page_size=10))
    assert [e.name for e in listed.events] == [event.name]

    request_id = str(uuid.uuid4())
    booking = await bookings().CreateBooking(book(event, 2, request_id=request_id), metadata=guest.metadata)
    assert booking.state == booking_pb2.Booking.CONFIRMED
    replay = await bookings().CreateBooking(book(event, 2, request_id=request_id), metadata=guest.metadata)
    assert replay.name == booking.name  # the request id, recorded through PgBouncer, seen by the other replica
    got = await bookings().GetBooking(booking_service_pb2.GetBookingRequest(name=booking.name), metadata=guest.metadata)
    assert got.seats == 2
    mine = await bookings().ListBookings(booking_service_pb2.ListBookingsRequest(), metadata=guest.metadata)
    assert [b.name for b in mine.bookings] == [booking.name]
    seen = await events().GetEvent(event_service_pb2.GetEventRequest(name=event.name), metadata=guest.metadata)
    assert (seen.seats_taken, seen.place.address) == (2, event.place.address)  # booked: the address shows
    guests = await events().ListEventGuests(
        event_service_pb2.ListEventGuestsRequest(parent=event.name), metadata=host.metadata
    )
    assert len(guests.guests) == 1

    cancelled = await bookings().CancelBooking(cancel(booking), metadata=guest.metadata)
    assert cancelled.state == booking_pb2.Booking.CANCELLED
    assert await seat_counts(stack.pool, event.name) == (0, 0, 0)

    # A held event: booked again, moved into the past (no waiting for a real start), marked held by its host,
    # then the blind reviews of host and guest, revealed as a pair.
    again = await bookings().CreateBooking(book(event, 1), metadata=guest.metadata)
    await stack.pool.execute(
        "UPDATE event.events SET start_time = now() - interval '3 hours', end_time = now() - interval '1 hour' "
        "WHERE id = $1",
        uid(event.name),
    )
    await events().CompleteEvent(event_service_pb2.CompleteEventRequest(name=event.name), metadata=host.metadata)
    first = await reviews().CreateReview(review_request(event.name, HOST, 4), metadata=guest.metadata)
    second = await reviews().CreateReview(
        review_request(event.name, GUEST, 5, subject_user=guest.resource), metadata=host.metadata
    )
    assert first.name != second.name
    rating = await reviews().GetUserRating(
        review_service_pb2.GetUserRatingRequest(name=f"{host.resource}/rating"), metadata=guest.metadata
    )
    assert (rating.as_host.count, rating.as_host.average) == (1, 4.0)
    listed_reviews = await reviews().ListReviews(review_service_pb2.ListReviewsRequest(event=event.name))
    assert listed_reviews is not None

    # Every step went through PgBouncer's pool of the services' alias.
    assert stack.bouncer.stats(APP_ALIAS)["total_xact_count"] > xacts_before
    # The worker relays the mails of the walk-through promptly although it polls once an hour: NOTIFY woke it.
    mails = {**await outbox_for(stack.pool, booking.name), **await outbox_for(stack.pool, again.name)}
    assert mails, "the walk-through wrote no outbox rows"

    async def relayed() -> bool:
        pending = await stack.pool.fetchval(
            "SELECT count(*) FROM notify.outbox WHERE state <> 'SENT' AND params->>'booking' = ANY($1::text[])",
            [booking.name, again.name],
        )
        return int(pending) == 0

    took = await wait_for(relayed, RELAY_WITHIN, "the walk-through's mails relayed", stack)
    assert took < RELAY_WITHIN


async def test_hot_event_burst_over_both_booking_replicas_sells_exactly_the_seats(stack: Stack) -> None:
    events = alternating(stack, "event", event_grpc.EventServiceStub)
    bookings = alternating(stack, "booking", booking_grpc.BookingServiceStub)
    host = new_caller("Hot host")
    event = await events().CreateEvent(
        create_request(datetime.now(UTC), capacity=HOT_SEATS, start_in=timedelta(days=2)), metadata=host.metadata
    )
    guests = [new_caller(f"Fan {i}") for i in range(HOT_GUESTS)]
    peak_backends = 0
    sampling = True

    async def sample_backends() -> None:
        nonlocal peak_backends
        while sampling:
            n = await stack.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' "
                "AND application_name NOT IN ($2, $3)",
                stack.database,
                OBSERVER,
                LISTEN_APP,
            )
            peak_backends = max(peak_backends, int(n))
            await asyncio.sleep(0.02)

    async def attempt(guest: Caller, stub: Any) -> str:
        request_id = str(uuid.uuid4())
        deadline = time.monotonic() + 60
        while True:
            try:
                await stub.CreateBooking(book(event, 1, request_id=request_id), metadata=guest.metadata, timeout=20)
                return "OK"
            except grpc.aio.AioRpcError as exc:
                error = rich_error(exc)
                # overload answers are retried with the same request id, as the SDKs do; anything else is final
                overloaded = error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
                if overloaded and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    continue
                return error.reason or error.code.name

    sampler = asyncio.create_task(sample_backends())
    try:
        outcomes = Counter(await asyncio.gather(*(attempt(g, bookings()) for g in guests)))
    finally:
        sampling = False
        await sampler
    stack.check_running()

    assert outcomes == {"OK": HOT_SEATS, "EVENT_SOLD_OUT": HOT_GUESTS - HOT_SEATS}, outcomes
    taken, booked, confirmed = await seat_counts(stack.pool, event.name)
    assert (taken, booked, confirmed) == (HOT_SEATS, HOT_SEATS, HOT_SEATS)  # 0 oversold, counter = bookings
    booked_guests = await stack.pool.fetchval(
        "SELECT count(DISTINCT guest_id) FROM booking.bookings WHERE event_id = $1", uid(event.name)
    )
    assert booked_guests == HOT_SEATS  # one booking per guest: no retry booked twice
    # Pooling happened: PostgreSQL saw at most PgBouncer's server connections (two aliases), while PgBouncer held
    # many more client connections than that.
    assert 0 < peak_backends <= 2 * POOL_SIZE, peak_backends
    clients = [c for c in stack.bouncer.show("CLIENTS") if c["database"] == APP_ALIAS]
    assert len(clients) > 2 * POOL_SIZE, len(clients)


async def test_worker_listens_on_its_direct_connection_and_writes_through_pgbouncer(stack: Stack) -> None:
    # PostgreSQL's view: one LISTEN session of the worker's, named for it.
    async def listening() -> bool:
        return bool(
            await stack.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                stack.database,
                LISTEN_APP,
            )
        )

    await wait_for(listening, 30, "the worker's LISTEN session", stack)
    [session] = await stack.pool.fetch(
        "SELECT client_port, query FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
        stack.database,
        LISTEN_APP,
    )
    assert session["query"].upper().startswith("LISTEN"), session["query"]

    # The worker process's own sockets: exactly one to PostgreSQL — that session — and its pool's to PgBouncer.
    assert stack.worker.proc is not None
    sockets = psutil.Process(stack.worker.proc.pid).net_connections(kind="tcp")
    to_postgres = [c for c in sockets if c.raddr and c.raddr.port == stack.bouncer.server_port]
    to_bouncer = [c for c in sockets if c.raddr and c.raddr.port == stack.bouncer.port]
    assert [c.laddr.port for c in to_postgres] == [session["client_port"]], (to_postgres, session)
    assert to_bouncer, "the worker's pool holds no connection to PgBouncer"
    # PgBouncer's view: those sockets are its clients under the worker's alias, and the LISTEN session's peer is
    # none of its server connections.
    worker_clients = {int(c["port"]) for c in stack.bouncer.show("CLIENTS") if c["database"] == WORKER_ALIAS}
    assert {c.laddr.port for c in to_bouncer} <= worker_clients, (to_bouncer, worker_clients)
    servers = {int(s["local_port"]) for s in stack.bouncer.show("SERVERS")}
    assert session["client_port"] not in servers

    # A write wakes the relay through NOTIFY on that session; the worker's claim and mark go through PgBouncer.
    worker_xacts = stack.bouncer.stats(WORKER_ALIAS).get("total_xact_count", 0)
    delivered = sum(stack.standin.deliveries().values())
    events = alternating(stack, "event", event_grpc.EventServiceStub)
    bookings = alternating(stack, "booking", booking_grpc.BookingServiceStub)
    event = await events().CreateEvent(create_request(datetime.now(UTC)), metadata=new_caller("Host").metadata)
    booking = await bookings().CreateBooking(book(event, 1), metadata=new_caller("Guest").metadata)

    async def sent() -> bool:
        states = await stack.pool.fetch("SELECT state FROM notify.outbox WHERE params->>'booking' = $1", booking.name)
        return bool(states) and all(r["state"] == "SENT" for r in states)

    await wait_for(sent, RELAY_WITHIN, "the booking's mails relayed", stack)
    assert stack.bouncer.stats(WORKER_ALIAS)["total_xact_count"] > worker_xacts
    assert sum(stack.standin.deliveries().values()) > delivered
