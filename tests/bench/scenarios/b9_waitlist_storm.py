"""B9 — waitlist storm: a hot, sold-out event with a 1,000-entry waitlist while every guest cancels at once.

Set-up (SQL, like B5): an event of ``capacity`` seats, all booked (one seat per guest), and a waitlist of 1,000
entries (200 in QUICK mode) of one or two seats, in join order. cowatch: every holder cancels at the same moment
over gRPC (8 HTTP/2 connections to a BookingService process); each cancellation offers the freed seat in the same
transaction. Guests react to their offer as to its mail: a watcher sees each new offer and its guest claims it
(ClaimOffer; one in ten declines, which passes the seats on), while newcomers keep trying to book the event. A
monitor reads the event and its entries in one statement every few milliseconds. After the storm, every offer
still open is made due and two offer sweeps run at once, then one more.

Baseline: the same seat-freeing transactions through asyncpg (lock the event row, cancel the booking, release the
seat, the same ``OFFER_NEXT`` statement until nothing fits), on a copy of the set-up, all at once. Ratio: cowatch
offers/s ÷ baseline offers/s. Correctness counters (all must be 0): ``oversold`` (taken + held > capacity, or taken
≠ confirmed seats, at any sample or at the end), ``skipped`` (a waiting entry passed over by a later one asking for
as many seats or more, or fitting in the free seats at the end), ``double_offered`` (an entry offered twice: two
offer mails), ``leaked_holds`` (seats_held ≠ the seats of the OFFERED entries, at any sample or after the sweeps),
``unexpected_errors``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from cowatch.booking.v1 import resources_pb2, service_pb2, service_pb2_grpc

from services.booking import waitlist_repository as entries
from services.booking.offer_sweep import OfferSweep
from services.common.clock import ManualClock, SystemClock
from tests.bench.harness import BenchContext, Row, channels, fmt_ms, stats

ID = "B9"
POOL = 10
GOAL = 0.5
WINDOW = timedelta(hours=2)

SNAPSHOT = """
SELECT e.capacity, e.seats_taken, e.seats_held,
       (SELECT coalesce(sum(seats), 0) FROM booking.waitlist w WHERE w.event_id = e.id AND w.state = 'OFFERED')
           AS offered,
       (SELECT coalesce(sum(seats), 0) FROM booking.bookings b WHERE b.event_id = e.id AND b.state = 'CONFIRMED')
           AS booked
FROM event.events e WHERE e.id = $1
"""

SKIPPED = """
SELECT count(*) FROM booking.waitlist a
JOIN booking.waitlist b ON b.event_id = a.event_id AND b.seq > a.seq
     AND b.state IN ('OFFERED', 'CLAIMED', 'DECLINED', 'EXPIRED')
WHERE a.event_id = $1 AND a.state = 'WAITING' AND a.seats <= b.seats
"""

FITTING_AT_END = """
SELECT count(*) FROM booking.waitlist w, event.events e
WHERE e.id = $1 AND w.event_id = e.id AND w.state = 'WAITING' AND w.seats <= e.capacity - e.seats_taken - e.seats_held
  AND NOT EXISTS (SELECT 1 FROM booking.bookings b WHERE b.event_id = e.id AND b.guest_id = w.guest_id
                  AND b.state = 'CONFIRMED')
"""


Pairs = list[tuple[str, uuid.UUID]]


async def set_up(pool: asyncpg.Pool, tag: str, capacity: int, waiters: int) -> tuple[uuid.UUID, Pairs, Pairs]:
    """The sold-out event, its holders' bookings and its waitlist; returns (event id, [(guest, booking)], [(guest,
    entry)])."""
    host, event_id = f"b9-host-{tag}-{uuid.uuid4().hex[:6]}", uuid.uuid4()
    start = datetime.now(UTC) + timedelta(days=3)
    holders = [(f"b9-h-{tag}-{event_id.hex[:6]}-{i}", uuid.uuid4()) for i in range(capacity)]
    rng = random.Random(9)
    waiting = [(f"b9-w-{tag}-{event_id.hex[:6]}-{i}", uuid.uuid4(), rng.choice((1, 1, 1, 2))) for i in range(waiters)]
    now = datetime.now(UTC)
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO account.users (id, display_name) VALUES ($1, 'g')",
            [(host,)] + [(g,) for g, _ in holders] + [(g,) for g, _, _ in waiting],
        )
        await conn.execute(
            """
            INSERT INTO event.events (id, host_id, film_id, film_title, title, start_time, end_time, time_zone,
                place_name, place_address, place_city, capacity, seats_taken, visibility, invite_token)
            VALUES ($1, $2, 'tt0079944', 'Stalker', 'Stalker premiere', $3, $4, 'Europe/Berlin', 'Kino',
                'Hauptstr. 1', 'Berlin', $5, $5, 'PUBLIC', $6)
            """,
            event_id,
            host,
            start,
            start + timedelta(hours=3),
            capacity,
            "t" * 32,
        )
        await conn.executemany(
            "INSERT INTO booking.bookings (id, event_id, guest_id, seats) VALUES ($1, $2, $3, 1)",
            [(b, event_id, g) for g, b in holders],
        )
        for g, e, n in waiting:  # one by one: seq is the join order
            await conn.execute(
                "INSERT INTO booking.waitlist (id, event_id, guest_id, seats, create_time, update_time) "
                "VALUES ($1, $2, $3, $4, $5, $5)",
                e,
                event_id,
                g,
                n,
                now,
            )
    return event_id, holders, [(g, e) for g, e, _ in waiting]


async def check(pool: asyncpg.Pool, event_id: uuid.UUID, counters: dict[str, int]) -> None:
    r = await pool.fetchrow(SNAPSHOT, event_id)
    assert r is not None
    if r["seats_taken"] + r["seats_held"] > r["capacity"] or r["seats_taken"] != r["booked"]:
        counters["oversold"] += 1
    if r["seats_held"] != r["offered"]:
        counters["leaked_holds"] += 1


async def raw_storm(pool: asyncpg.Pool, event_id: uuid.UUID, holders: Pairs) -> tuple[float, int]:
    """(seconds, offers made) for the baseline's cancel + offer transactions."""
    offers = 0
    started = time.perf_counter()

    async def one(booking_id: uuid.UUID) -> None:
        nonlocal offers
        async with pool.acquire() as conn, conn.transaction():
            now = datetime.now(UTC)
            await conn.execute("SELECT 1 FROM event.events WHERE id = $1 FOR NO KEY UPDATE", event_id)
            await conn.execute(
                "UPDATE booking.bookings SET state = 'CANCELLED', cancel_time = $2 WHERE id = $1", booking_id, now
            )
            await conn.execute("UPDATE event.events SET seats_taken = seats_taken - 1 WHERE id = $1", event_id)
            offers += len(await entries.offer_free_seats(conn, event_id, now, WINDOW))

    await asyncio.gather(*(one(b) for _, b in holders))
    return time.perf_counter() - started, offers


async def run(ctx: BenchContext) -> list[Row]:
    capacity = 40 if ctx.quick else 200
    waiters = 200 if ctx.quick else 1000
    newcomers = 50 if ctx.quick else 300
    tag = uuid.uuid4().hex[:6]
    counters = {"oversold": 0, "skipped": 0, "double_offered": 0, "leaked_holds": 0, "unexpected_errors": 0}
    claim_latencies: list[float] = []
    answers: dict[str, int] = {}

    async with ctx.pool(POOL) as pool:
        raw_event, raw_holders, _ = await set_up(pool, tag + "r", capacity, waiters)
        raw_seconds, raw_offers = await raw_storm(pool, raw_event, raw_holders)
        ctx.log(f"  {ID} raw: {raw_offers} offers in {raw_seconds * 1000:.0f} ms")

        event_id, holders, waiting = await set_up(pool, tag, capacity, waiters)
        name = f"events/{event_id}"
        guest_of = {e: g for g, e in waiting}
        async with ctx.service(
            "services.booking",
            db_pool_min_size=POOL,
            db_pool_max_size=POOL,
            max_concurrent_rpcs=8 * (capacity + waiters + newcomers),
            db_acquire_timeout_seconds=60,
        ) as svc:
            stubs = [service_pb2_grpc.BookingServiceStub(c) for c in channels(svc.address, 8)]
            stop = asyncio.Event()
            claimers: list[asyncio.Task[None]] = []
            seen: set[uuid.UUID] = set()

            async def monitor() -> None:
                while not stop.is_set():
                    await check(pool, event_id, counters)
                    await asyncio.sleep(0.005)

            async def claim(i: int, entry_id: uuid.UUID) -> None:
                md = ctx.metadata(guest_of[entry_id])
                entry_name = f"{name}/waitlistEntries/{entry_id}"
                stub = stubs[i % len(stubs)]
                t0 = time.perf_counter()
                try:
                    if i % 10 == 9:
                        await stub.DeclineOffer(
                            service_pb2.DeclineOfferRequest(name=entry_name), metadata=md, timeout=60
                        )
                        key = "declined"
                    else:
                        await stub.ClaimOffer(
                            service_pb2.ClaimOfferRequest(name=entry_name, request_id=str(uuid.uuid4())),
                            metadata=md,
                            timeout=60,
                        )
                        claim_latencies.append(time.perf_counter() - t0)
                        key = "claimed"
                except grpc.aio.AioRpcError as exc:
                    key = exc.code().name
                    counters["unexpected_errors"] += 1
                answers[key] = answers.get(key, 0) + 1

            async def watcher() -> None:
                """Guests reacting to their offer mail."""
                while not stop.is_set():
                    rows = await pool.fetch(
                        "SELECT id FROM booking.waitlist WHERE event_id = $1 AND state = 'OFFERED'", event_id
                    )
                    for r in rows:
                        if r["id"] not in seen:
                            seen.add(r["id"])
                            claimers.append(asyncio.create_task(claim(len(seen), r["id"])))
                    await asyncio.sleep(0.005)

            async def cancel(i: int, guest: str, booking_id: uuid.UUID) -> None:
                try:
                    await stubs[i % len(stubs)].CancelBooking(
                        service_pb2.CancelBookingRequest(name=f"bookings/{booking_id}", request_id=str(uuid.uuid4())),
                        metadata=ctx.metadata(guest),
                        timeout=60,
                    )
                except grpc.aio.AioRpcError:
                    counters["unexpected_errors"] += 1

            async def newcomer(i: int) -> None:
                for _ in range(3):
                    try:
                        await stubs[i % len(stubs)].CreateBooking(
                            service_pb2.CreateBookingRequest(
                                booking=resources_pb2.Booking(event=name, seats=1), request_id=str(uuid.uuid4())
                            ),
                            metadata=ctx.metadata(f"b9-n-{tag}-{i}"),
                            timeout=60,
                        )
                        answers["newcomer booked"] = answers.get("newcomer booked", 0) + 1
                        return
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION):
                            counters["unexpected_errors"] += 1
                    await asyncio.sleep(0.05)

            tasks = [asyncio.create_task(monitor()), asyncio.create_task(watcher())]
            started = time.perf_counter()
            await asyncio.gather(
                *(cancel(i, g, b) for i, (g, b) in enumerate(holders)), *(newcomer(i) for i in range(newcomers))
            )
            storm_seconds = time.perf_counter() - started
            # let the chain of claims and declines settle
            for _ in range(400):
                await asyncio.gather(*claimers)
                pending = await pool.fetchval(
                    "SELECT count(*) FROM booking.waitlist WHERE event_id = $1 AND state = 'OFFERED'", event_id
                )
                if not pending or (all(t.done() for t in claimers) and not pending):
                    break
                await asyncio.sleep(0.01)
            settle_seconds = time.perf_counter() - started
            stop.set()
            await asyncio.gather(*tasks)
            await asyncio.gather(*claimers)

        offers = await pool.fetchval(
            "SELECT count(*) FROM booking.waitlist WHERE event_id = $1 "
            "AND state IN ('OFFERED', 'CLAIMED', 'DECLINED', 'EXPIRED')",
            event_id,
        )
        counters["skipped"] += await pool.fetchval(SKIPPED, event_id)
        counters["double_offered"] += await pool.fetchval(
            "SELECT count(*) FROM (SELECT params->>'waitlist_entry' FROM notify.outbox WHERE template_id = "
            "'waitlist_offer' AND params->>'event' = $1 GROUP BY 1 HAVING count(*) > 1) d",
            name,
        )
        # every open offer expires: two sweepers at once, then one more; holds are released exactly once
        await pool.execute(
            "UPDATE booking.waitlist SET offer_expire_time = now() - interval '1 second' "
            "WHERE event_id = $1 AND state = 'OFFERED'",
            event_id,
        )
        clock = ManualClock(SystemClock().now())
        sweeps = [OfferSweep(pool, clock, "https://cowatch.bench", WINDOW) for _ in range(2)]
        await asyncio.gather(*(s.run_once() for s in sweeps))
        await sweeps[0].run_once()
        await check(pool, event_id, counters)
        counters["skipped"] += await pool.fetchval(SKIPPED, event_id) + await pool.fetchval(FITTING_AT_END, event_id)

    rate = offers / settle_seconds if settle_seconds else 0.0
    raw_rate = raw_offers / raw_seconds if raw_seconds else 0.0
    ratio = rate / raw_rate if raw_rate else None
    claims = stats(claim_latencies, settle_seconds)
    met = ratio is not None and ratio >= GOAL
    notes = (
        ("" if met else f"ratio MISSED by {GOAL - (ratio or 0):.2f}. ")
        + f"{capacity} holders cancel at once, {waiters} waiting, {newcomers} newcomers booking: {offers} offers in "
        f"{settle_seconds * 1000:,.0f} ms ({rate:,.0f}/s; cancels done in {storm_seconds * 1000:,.0f} ms) vs "
        f"{raw_offers} in {raw_seconds * 1000:,.0f} ms raw ({raw_rate:,.0f}/s); claim latency p50 "
        f"{fmt_ms(claims.p50_ms)} p99 {fmt_ms(claims.p99_ms)} (closed burst); answers {answers}; counters "
        + ", ".join(f"{k} {v}" for k, v in counters.items())
    )
    return [
        Row(
            id=ID,
            scenario=f"waitlist storm ({capacity} cancels, {waiters}-entry waitlist, claims + newcomers)",
            cowatch=f"{rate:,.0f} offers/s, claim p99 {fmt_ms(claims.p99_ms)}",
            baseline=f"{raw_rate:,.0f} offers/s (raw cancel + offer SQL, asyncpg)",
            ratio=ratio,
            goal=f"≥ {GOAL}; 0 oversold/skipped/double-offered/leaked",
            met=met,
            notes=notes,
            correctness=counters,
            data={
                "offers": offers,
                "offers_per_s": rate,
                "raw_offers_per_s": raw_rate,
                "claim_latency": vars(claims),
                "answers": answers,
                "capacity": capacity,
                "waiters": waiters,
            },
        )
    ]
