"""B4 — uncontended booking: CreateBooking through gRPC vs the fixed naive reference, and vs the same SQL.

10,000 public events of 1,000 seats; each booking picks a random event, 1–3 seats, a fresh guest and a request id,
so bookings practically never wait for each other. The BookingService runs as its own process (production
settings: pool of ``db_pool_max_size`` = 10, INFO logs, JWT on every call) and is driven over 4 HTTP/2
connections by ``CONCURRENCY`` in-flight calls. Two baselines through an asyncpg pool of the same size, with the
same number of in-flight transactions:

- the **naive reference** (``tests/bench/naive_reference.py``, fixed: UPDATE the seat counter + INSERT the booking,
  one transaction), which the goal is set against;
- the **mirror** (informative): exactly the service's statements (checked at start: the SQL texts the service sends
  for one booking are recorded and compared to the mirror's), so cowatch ÷ mirror is the RPC layer's share.

Throughput: closed loop, rounds alternating between the three sides (median per side). Latency: open loop at
50 % of the lower of cowatch's and the reference's capacity, the same offered rate for both. Two rows: ``B4`` on
the run's server and ``B4-durable`` on a server with durable commits (fsync and synchronous_commit on), where
the goal must hold too.
"""

from __future__ import annotations

import hashlib
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
from cowatch.booking.v1 import resources_pb2, service_pb2, service_pb2_grpc

from services.booking import repository as bookings
from services.booking.service import BookingService, CreateBooking
from services.common import idempotency
from services.common.clock import SystemClock
from services.common.identity import User
from services.event.domain import local_time
from services.notification import outbox
from tests.bench import naive_reference
from tests.bench.harness import (
    BenchContext,
    LoadResult,
    Row,
    channels,
    closed_loop,
    fmt_ms,
    fmt_rate,
    open_loop,
    seed_events,
)

ID = "B4"
EVENTS = 10_000
CAPACITY = 1000
POOL = 10  # the service's default db_pool_max_size
CONCURRENCY = 32
GOAL = 0.8  # against the naive reference (tests/bench/naive_reference.py)


# ---------------------------------------------------------------------------------------------- baseline


class Baseline:
    """The service's CreateBooking transaction, statement for statement, on a bare asyncpg connection."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    async def book(self, conn: Any, event_id: uuid.UUID, guest_id: str, seats: int) -> None:
        request_id = uuid.uuid4()
        request_hash = hashlib.sha256(f"{event_id}/{seats}".encode()).digest()
        booking_id = uuid.uuid4()
        now = datetime.now(UTC)
        event = await conn.fetchrow(bookings.EVENT_FOR_BOOKING, event_id, guest_id, request_id)
        if event is None or event["already_booked"] or event["seats_taken"] + seats > event["capacity"]:
            raise RuntimeError("baseline refused")
        params = {
            "event": f"events/{event_id}",
            "event_title": event["title"],
            "film_title": event["film_title"],
            "start_local": local_time(event["start_time"], event["time_zone"]),
            "start_time": event["start_time"].isoformat(),
            "time_zone": event["time_zone"],
            "place_name": event["place_name"],
            "place_city": event["place_city"],
            "place_address": event["place_address"],
            "link": f"https://cowatch.bench/events/{event_id}",
            "host_name": event["host_display_name"],
            "booking": f"bookings/{booking_id}",
            "seats": seats,
            "guest_name": "Bench Guest",
        }
        # The whole write: one statement, its own transaction (the service's batch of one).
        new = bookings.NewBooking(
            booking_id=booking_id,
            guest_id=guest_id,
            guest_name="Bench Guest",
            seats=seats,
            request_id=request_id,
            request_hash=request_hash,
            outbox=[
                {
                    "dedupe_key": f"booking-{kind}/{booking_id}",
                    "template_id": f"booking_{kind.replace('-', '_')}",
                    "recipients": [to],
                    "params": params,
                    "request_id": None,
                    "traceparent": None,
                }
                for kind, to in (("confirmed", guest_id), ("new-guest", event["host_id"]))
            ],
        )
        reminders = {str(kind): offset.total_seconds() for kind, offset in outbox.REMINDER_OFFSETS.items()}
        (outcome,) = await conn.fetch(
            bookings.CREATE_BOOKINGS,
            *bookings.create_bookings_args(bookings.to_bookable_event(event), now, [new], reminders),
        )
        if outcome["outcome"] != "BOOKED":
            raise RuntimeError(f"baseline refused: {outcome['outcome']}")


class _Recorder(asyncpg.Connection):
    """An asyncpg connection that remembers the SQL text of every statement it sends."""

    log: ClassVar[list[str]] = []

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        _Recorder.log.append(" ".join(query.split()))
        return await super().execute(query, *args, **kwargs)

    async def executemany(self, command: str, args: Any, **kwargs: Any) -> Any:
        _Recorder.log.append(" ".join(command.split()))
        return await super().executemany(command, args, **kwargs)

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        _Recorder.log.append(" ".join(query.split()))
        return await super().fetch(query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        _Recorder.log.append(" ".join(query.split()))
        return await super().fetchrow(query, *args, **kwargs)

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        _Recorder.log.append(" ".join(query.split()))
        return await super().fetchval(query, *args, **kwargs)


async def sql_difference(ctx: BenchContext, event_ids: list[uuid.UUID]) -> list[str]:
    """Statements of one CreateBooking by the service layer vs one baseline booking; [] when identical."""
    pool = await asyncpg.create_pool(ctx.database_url, min_size=1, max_size=1, connection_class=_Recorder)
    try:
        service = BookingService(pool, SystemClock(), "https://cowatch.bench")
        user = User(f"b4-check-{uuid.uuid4().hex[:8]}", "Bench Guest")
        request = idempotency.RequestKey(user.id, "CreateBooking", uuid.uuid4(), b"x" * 32)
        _Recorder.log.clear()
        await service.create(CreateBooking(user, event_ids[0], 1, "", request))
        served = list(_Recorder.log)
        _Recorder.log.clear()
        async with pool.acquire() as conn:
            await Baseline().book(conn, event_ids[1], f"b4-check-{uuid.uuid4().hex[:8]}", 1)
        direct = list(_Recorder.log)
    finally:
        await pool.close()
    if served == direct:
        return []
    return [f"service: {s[:60]!r} / baseline: {d[:60]!r}" for s, d in zip(served, direct, strict=False) if s != d] or [
        f"service sent {len(served)} statements, baseline {len(direct)}"
    ]


# ---------------------------------------------------------------------------------------------- run


class Tokens:
    """Pre-signed tokens of fresh guests, so that the client's JWT signing stays out of the measurement."""

    def __init__(self, ctx: BenchContext, prefix: str) -> None:
        self._ctx = ctx
        self._prefix = prefix
        self._bank: dict[int, tuple[tuple[str, str], ...]] = {}

    def fill(self, start: int, count: int) -> None:
        for i in range(start, start + count):
            if i not in self._bank:
                self._bank[i] = self._ctx.metadata(f"{self._prefix}-{i}", "Bench Guest")

    def __call__(self, i: int) -> tuple[tuple[str, str], ...]:
        found = self._bank.pop(i, None)
        return found if found is not None else self._ctx.metadata(f"{self._prefix}-{i}", "Bench Guest")


class NaiveGuests:
    """Guests for the naive reference, created (COPY, outside the measurement) ahead of the bookings that use
    them: the reference books for existing users."""

    def __init__(self, pool: asyncpg.Pool, prefix: str) -> None:
        self._pool = pool
        self._prefix = prefix
        self.created = 0

    def __call__(self, n: int) -> str:
        return f"{self._prefix}-{n}"

    async def fill(self, upto: int) -> None:
        if upto > self.created:
            await naive_reference.create_guests(self._pool, [self(n) for n in range(self.created, upto)])
            self.created = upto


async def run(ctx: BenchContext) -> list[Row]:
    rows = [await measure(ctx, ID)]
    async with ctx.durable() as durable:
        rows.append(await measure(durable, f"{ID}-durable"))
    return rows


async def measure(ctx: BenchContext, row_id: str) -> Row:
    """One row: cowatch vs the naive reference (the goal) and vs the mirror baseline (informative), on
    ``ctx``'s database."""
    seconds = ctx.seconds(5.0, 0.4)
    rounds = 1 if ctx.quick else 3
    concurrency = 8 if ctx.quick else CONCURRENCY
    rng = random.Random(4)
    async with ctx.pool(POOL) as pool:
        event_ids = await seed_events(pool, EVENTS, capacity=CAPACITY, host_prefix="b4-host")
        names = [f"events/{e}" for e in event_ids]
        mismatch = await sql_difference(ctx, event_ids)

        async with ctx.service(
            "services.booking",
            db_pool_min_size=POOL,
            db_pool_max_size=POOL,
            max_concurrent_rpcs=4096,
            db_acquire_timeout_seconds=30,
        ) as svc:
            stubs = [service_pb2_grpc.BookingServiceStub(c) for c in channels(svc.address, 4)]
            tokens = Tokens(ctx, f"b4-{uuid.uuid4().hex[:6]}")
            guests = NaiveGuests(pool, f"b4-naive-{uuid.uuid4().hex[:6]}")
            baseline = Baseline()
            counter = {"grpc": 0, "sql": 0, "naive": 0, "naive_refused": 0}

            async def via_grpc(i: int) -> None:
                n = counter["grpc"]
                counter["grpc"] += 1
                request = service_pb2.CreateBookingRequest(
                    booking=resources_pb2.Booking(event=names[rng.randrange(EVENTS)], seats=rng.randint(1, 3)),
                    request_id=str(uuid.uuid4()),
                )
                await stubs[n % len(stubs)].CreateBooking(request, metadata=tokens(n), timeout=30)

            async def via_sql(i: int) -> None:
                n = counter["sql"]
                counter["sql"] += 1
                async with pool.acquire() as conn:
                    await baseline.book(conn, event_ids[rng.randrange(EVENTS)], f"b4-sql-{n}", rng.randint(1, 3))

            async def via_naive(i: int) -> None:
                n = counter["naive"]
                counter["naive"] += 1
                async with pool.acquire() as conn:
                    if not await naive_reference.book(
                        conn, event_ids[rng.randrange(EVENTS)], guests(n), rng.randint(1, 3)
                    ):
                        counter["naive_refused"] += 1  # never expected: no event comes near its capacity

            async def prefill(rate: float, window: float) -> None:
                tokens.fill(counter["grpc"], int(rate * window * 1.5) + 100)
                await guests.fill(counter["naive"] + int(max(rate, 3000) * window * 2) + 100)

            async def timed(kind: str, runner: Callable[[], Any]) -> LoadResult:
                result: LoadResult = await runner()
                ctx.log(
                    f"  {row_id} {kind}: {result.stats.rate:,.0f}/s p50 {result.stats.p50_ms:.1f} ms "
                    f"p99 {result.stats.p99_ms:.1f} ms errors {result.errors or 0}"
                )
                return result

            # warm-up: connections, prepared statements, grpc channels
            warm = ctx.seconds(1.0, 0.2)
            await prefill(500, warm)
            await closed_loop(via_grpc, concurrency=concurrency, seconds=warm)
            await closed_loop(via_sql, concurrency=concurrency, seconds=warm)
            await closed_loop(via_naive, concurrency=concurrency, seconds=warm)

            grpc_runs: list[LoadResult] = []
            sql_runs: list[LoadResult] = []
            naive_runs: list[LoadResult] = []
            last_grpc, last_naive = 1000.0, 3000.0
            for _ in range(rounds):
                await prefill(last_naive, seconds)
                naive_runs.append(
                    await timed(
                        "naive closed", lambda: closed_loop(via_naive, concurrency=concurrency, seconds=seconds)
                    )
                )
                last_naive = naive_runs[-1].stats.rate
                sql_runs.append(
                    await timed("mirror closed", lambda: closed_loop(via_sql, concurrency=concurrency, seconds=seconds))
                )
                await prefill(last_grpc, seconds)
                grpc_runs.append(
                    await timed("grpc closed", lambda: closed_loop(via_grpc, concurrency=concurrency, seconds=seconds))
                )
                last_grpc = grpc_runs[-1].stats.rate
            grpc_rate = statistics.median(r.stats.rate for r in grpc_runs)
            sql_rate = statistics.median(r.stats.rate for r in sql_runs)
            naive_rate = statistics.median(r.stats.rate for r in naive_runs)

            offered = 0.5 * min(grpc_rate, naive_rate)
            await prefill(offered, seconds)
            naive_open = await timed("naive open", lambda: open_loop(via_naive, rate=offered, seconds=seconds))
            grpc_open = await timed("grpc open", lambda: open_loop(via_grpc, rate=offered, seconds=seconds))

        async with pool.acquire() as conn:
            bad_events = await conn.fetchval(
                """
                SELECT count(*) FROM event.events e
                LEFT JOIN (SELECT event_id, sum(seats) AS s FROM booking.bookings WHERE state = 'CONFIRMED'
                           GROUP BY event_id) b ON b.event_id = e.id
                WHERE e.id = ANY($1::uuid[]) AND (e.seats_taken <> coalesce(b.s, 0) OR e.seats_taken > e.capacity)
                """,
                event_ids,
            )

    errors = sum(sum(r.errors.values()) for r in (*grpc_runs, *sql_runs, *naive_runs, grpc_open, naive_open))
    ratio = grpc_rate / naive_rate if naive_rate else None
    mirror_ratio = grpc_rate / sql_rate if sql_rate else None
    met = ratio is not None and ratio >= GOAL
    verdict = "" if met else f"MISSED by {GOAL - (ratio or 0):.2f} ({(ratio or 0) / GOAL:.0%} of the goal). "
    notes = (
        f"{verdict}{ctx.pg_description}; closed loop, {concurrency} in flight, pool {POOL}, median of {rounds} "
        f"alternating {seconds:g} s rounds; mirror baseline (the service's own SQL, statement by statement, "
        f"asyncpg; informative): {fmt_rate(sql_rate, 'bookings/s')}, cowatch ÷ mirror "
        f"{mirror_ratio or 0:.2f}; open loop at {offered:,.0f}/s (50 % of capacity): "
        f"gRPC p50 {fmt_ms(grpc_open.stats.p50_ms)} p99 {fmt_ms(grpc_open.stats.p99_ms)}, "
        f"naive p50 {fmt_ms(naive_open.stats.p50_ms)} p99 {fmt_ms(naive_open.stats.p99_ms)}; "
        f"errors {errors}, seat mismatches {bad_events}, baseline SQL differs {len(mismatch)}"
    )
    if mismatch:
        notes += " (" + "; ".join(mismatch[:2]) + ")"
    return Row(
        id=row_id,
        scenario="uncontended booking (random event of 10,000, 1–3 seats)"
        + (", durable commits" if row_id.endswith("-durable") else ""),
        cowatch=fmt_rate(grpc_rate, "bookings/s"),
        baseline=fmt_rate(naive_rate, "bookings/s") + " (naive reference: UPDATE + INSERT, asyncpg)",
        ratio=ratio,
        goal=f"≥ {GOAL} vs naive",
        met=met,
        notes=notes,
        correctness={
            "errors": errors,
            "seat_mismatch_events": int(bad_events),
            "baseline_sql_differs": len(mismatch),
            "naive_refused": counter["naive_refused"],
        },
        data={
            "postgres": ctx.pg_description,
            "grpc_rates": [r.stats.rate for r in grpc_runs],
            "naive_rates": [r.stats.rate for r in naive_runs],
            "mirror_rates": [r.stats.rate for r in sql_runs],
            "mirror_ratio": mirror_ratio,
            "offered_rate": offered,
            "grpc_open": vars(grpc_open.stats),
            "naive_open": vars(naive_open.stats),
            "concurrency": concurrency,
            "pool": POOL,
            "seconds": seconds,
            "rounds": rounds,
            "started": time.time(),
        },
    )
