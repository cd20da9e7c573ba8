"""The waitlist under real concurrency: 560 clients over real gRPC channels against one real BookingService (the
one from test_bookings_concurrency, sized for a herd), and the offer sweep, in-process and as a process killed
with SIGKILL.

The storm: 40 holders of a sold-out 40-seat event cancel while 220 waiters (1 or 2 seats) poll their entry and
claim (or now and then decline) their offers, and 300 newcomers keep trying to book. A monitor reads the event
and its entries in one snapshot all along. Checked: seats_taken + seats_held <= capacity at every sample and at
the end; seats_held == the seats of the OFFERED entries (no offer made twice for the same seats, no leaked hold)
at every sample; no waiter skipped while it fit (first fit in join order: an entry still waiting was passed over
only by later entries asking for fewer seats); every expired offer released its seats exactly once, after a
sweeper SIGKILL too.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as bs
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.booking.offer_sweep import OfferSweep
from services.common.clock import ManualClock
from tests.api.test_bookings_concurrency import stubs  # noqa: F401  (the herd-sized server)
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER, new_caller, rich_error
from tests.support.bookings import book, cancel, new_event, uid

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

CAPACITY, WAITERS, NEWCOMERS = 40, 220, 300
E = booking_pb2.WaitlistEntry

SNAPSHOT = """
SELECT e.capacity, e.seats_taken, e.seats_held,
       (SELECT coalesce(sum(seats), 0) FROM booking.waitlist w WHERE w.event_id = e.id AND w.state = 'OFFERED')
           AS offered,
       (SELECT coalesce(sum(seats), 0) FROM booking.bookings b WHERE b.event_id = e.id AND b.state = 'CONFIRMED')
           AS booked
FROM event.events e WHERE e.id = $1
"""


async def check(pool: asyncpg.Pool, event_id: uuid.UUID) -> tuple[int, int]:
    """One consistent snapshot (one statement); returns (taken, held)."""
    r = await pool.fetchrow(SNAPSHOT, event_id)
    assert r is not None
    assert r["seats_taken"] + r["seats_held"] <= r["capacity"], dict(r)  # never oversold
    assert r["seats_held"] == r["offered"], dict(r)  # no double offer, no leaked hold
    assert r["seats_taken"] == r["booked"], dict(r)
    return r["seats_taken"], r["seats_held"]


async def no_waiter_skipped(pool: asyncpg.Pool, event_id: uuid.UUID) -> None:
    skipped = await pool.fetch(
        "SELECT a.seq, a.seats, b.seq AS later_seq, b.seats AS later_seats FROM booking.waitlist a "
        "JOIN booking.waitlist b ON b.event_id = a.event_id AND b.seq > a.seq "
        "AND b.state IN ('OFFERED', 'CLAIMED', 'DECLINED', 'EXPIRED') "
        "WHERE a.event_id = $1 AND a.state = 'WAITING' AND a.seats <= b.seats",
        event_id,
    )
    assert not skipped, [dict(r) for r in skipped[:5]]
    free = await pool.fetchval("SELECT capacity - seats_taken - seats_held FROM event.events WHERE id = $1", event_id)
    fitting = await pool.fetchval(
        "SELECT count(*) FROM booking.waitlist w WHERE w.event_id = $1 AND w.state = 'WAITING' AND w.seats <= $2 "
        "AND NOT EXISTS (SELECT 1 FROM booking.bookings b WHERE b.event_id = $1 AND b.guest_id = w.guest_id "
        "AND b.state = 'CONFIRMED')",
        event_id,
        free,
    )
    assert fitting == 0, f"{fitting} waiting entries fit in {free} free seats"


async def test_cancel_storm_while_waiters_claim_and_newcomers_book(
    stubs: list[booking_grpc.BookingServiceAsyncStub],  # noqa: F811
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool: asyncpg.Pool,
):
    event = await new_event(events, clock, capacity=CAPACITY, start_in=timedelta(days=70))
    event_id = uid(event.name)
    holders = [new_caller() for _ in range(CAPACITY)]
    held = await asyncio.gather(
        *(
            stubs[i % len(stubs)].CreateBooking(book(event), metadata=h.metadata, timeout=120)
            for i, h in enumerate(holders)
        )
    )
    rng = random.Random(15)
    waiters = [new_caller() for _ in range(WAITERS)]
    entries = []
    for i, w in enumerate(waiters):  # in a known order, so join order is the list's
        request = bs.JoinWaitlistRequest(parent=event.name, waitlist_entry=E(seats=rng.choice((1, 1, 2))))
        entries.append(await stubs[i % len(stubs)].JoinWaitlist(request, metadata=w.metadata, timeout=60))
    stop = asyncio.Event()
    samples = 0

    async def monitor() -> None:
        nonlocal samples
        while not stop.is_set():
            await check(db_pool, event_id)
            samples += 1
            await asyncio.sleep(0.005)

    async def holder(i: int) -> None:
        await asyncio.sleep(rng.random() * 0.5)
        await stubs[i % len(stubs)].CancelBooking(cancel(held[i]), metadata=holders[i].metadata, timeout=120)

    outcomes: dict[str, int] = {}
    refusals: set[str] = set()

    async def waiter(i: int) -> None:
        stub, md, name = stubs[i % len(stubs)], waiters[i].metadata, entries[i].name
        for _ in range(60):
            e = await stub.GetWaitlistEntry(bs.GetWaitlistEntryRequest(name=name), metadata=md, timeout=60)
            if e.state == E.OFFERED:
                try:
                    if i % 7 == 0:
                        await stub.DeclineOffer(bs.DeclineOfferRequest(name=name), metadata=md, timeout=60)
                        key = "declined"
                    else:
                        await stub.ClaimOffer(bs.ClaimOfferRequest(name=name), metadata=md, timeout=60)
                        key = "claimed"
                except grpc.aio.AioRpcError as exc:
                    key = rich_error(exc).reason
                outcomes[key] = outcomes.get(key, 0) + 1
                return
            await asyncio.sleep(0.05)

    async def newcomer(i: int) -> None:
        guest = new_caller()
        for _ in range(3):
            try:
                await stubs[i % len(stubs)].CreateBooking(book(event), metadata=guest.metadata, timeout=120)
                outcomes["newcomer booked"] = outcomes.get("newcomer booked", 0) + 1
                return
            except grpc.aio.AioRpcError as exc:
                refusals.add(rich_error(exc).reason)
            await asyncio.sleep(rng.random() * 0.2)

    watcher = asyncio.create_task(monitor())
    await asyncio.gather(
        *(holder(i) for i in range(CAPACITY)),
        *(waiter(i) for i in range(WAITERS)),
        *(newcomer(i) for i in range(NEWCOMERS)),
    )
    stop.set()
    await watcher
    assert samples > 10
    taken, held_now = await check(db_pool, event_id)
    await no_waiter_skipped(db_pool, event_id)
    assert outcomes.get("claimed", 0) > 0, outcomes
    assert refusals <= {"EVENT_SOLD_OUT"}, refusals
    # Each entry was offered at most once (one offer mail per entry, and no entry offered twice).
    dup = await db_pool.fetchval(
        "SELECT count(*) FROM (SELECT params->>'waitlist_entry' FROM notify.outbox WHERE template_id = "
        "'waitlist_offer' AND params->>'event' = $1 GROUP BY 1 HAVING count(*) > 1) d",
        event.name,
    )
    assert dup == 0

    # Offers nobody claimed expire: two sweepers at once, then again; each hold is released exactly once.
    clock.advance(timedelta(hours=2, seconds=1))
    sweeps = [OfferSweep(db_pool, clock, "https://cowatch.test", timedelta(hours=2)) for _ in range(2)]
    await asyncio.gather(*(s.run_once() for s in sweeps))
    await sweeps[0].run_once()
    await check(db_pool, event_id)
    await no_waiter_skipped(db_pool, event_id)
    due = await db_pool.fetchval(
        "SELECT count(*) FROM booking.waitlist WHERE event_id = $1 AND state = 'OFFERED' AND offer_expire_time <= $2",
        event_id,
        clock.now(),
    )
    assert due == 0
    assert taken + held_now <= CAPACITY


async def test_a_sweeper_killed_mid_sweep_loses_no_expiry_and_releases_nothing_twice(
    stubs: list[booking_grpc.BookingServiceAsyncStub],  # noqa: F811
    events: event_grpc.EventServiceAsyncStub,
    clock: ManualClock,
    db_pool: asyncpg.Pool,
    database_url: str,
):
    # 30 events, each with 2 offers out and 2 entries waiting behind them.
    ids = []
    for n in range(30):
        event = await new_event(events, clock, capacity=2, start_in=timedelta(days=80 + n))
        ids.append(uid(event.name))
        holders = [new_caller(), new_caller()]
        held = [await stubs[0].CreateBooking(book(event), metadata=h.metadata) for h in holders]
        for _ in range(4):
            await stubs[0].JoinWaitlist(bs.JoinWaitlistRequest(parent=event.name), metadata=new_caller().metadata)
        for h, b in zip(holders, held, strict=True):
            await stubs[0].CancelBooking(cancel(b), metadata=h.metadata)
    # The offers are due by the wall clock (the sweeper process runs on it).
    await db_pool.execute(
        "UPDATE booking.waitlist SET offer_expire_time = now() - interval '1 second', offer_time = now() - "
        "interval '1 hour' WHERE event_id = ANY($1::uuid[]) AND state = 'OFFERED'",
        ids,
    )
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "COWATCH_SWEEP_INTERVAL_SECONDS": "0.01",
        "COWATCH_LOG_LEVEL": "WARNING",
    }
    env.update(COWATCH_JWT_ISSUER=ISSUER, COWATCH_JWT_AUDIENCE=AUDIENCE, COWATCH_JWT_HS256_SECRET=HS256_SECRET)
    for name in ("REDIS_URL", "COWATCH_REDIS_URL"):  # no cache: nothing of the shared Redis is touched
        env.pop(name, None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.booking.offer_sweep", env=env)
    try:
        done = 0
        for _ in range(1500):  # kill it as soon as it has expired something (mid-pass, most likely)
            done = await db_pool.fetchval(
                "SELECT count(*) FROM booking.waitlist WHERE event_id = ANY($1::uuid[]) AND state = 'EXPIRED'", ids
            )
            if done:
                break
            await asyncio.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    assert done, "the sweeper process expired nothing before it was killed"
    for event_id in ids:
        await check(db_pool, event_id)  # a killed transaction left nothing half-done
    # "Restart": the next sweep finishes the work, exactly once.
    wall = ManualClock(datetime.now(UTC))  # the wall clock, as the killed process used
    await OfferSweep(db_pool, wall, "https://cowatch.test", timedelta(hours=2)).run_once()
    for event_id in ids:
        await check(db_pool, event_id)
        await no_waiter_skipped(db_pool, event_id)
    expired = await db_pool.fetchval(
        "SELECT count(*) FROM booking.waitlist WHERE event_id = ANY($1::uuid[]) AND state = 'EXPIRED'", ids
    )
    assert expired == 60  # every one of the 2 x 30 first offers, once
    mails = await db_pool.fetchval(
        "SELECT count(*) FROM notify.outbox WHERE template_id = 'waitlist_offer_expired' "
        "AND params->>'event' = ANY($1::text[])",
        [f"events/{i}" for i in ids],
    )
    assert mails == 60
