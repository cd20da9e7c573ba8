"""B7 — 2× overload: does load shedding keep the goodput, and are refusals fast and clean?

The BookingService runs as its own process with ``max_concurrent_rpcs`` = ``LIMIT`` (the interceptor refuses
the RPCs beyond it at once with ``RESOURCE_EXHAUSTED`` / ``SERVER_OVERLOADED``), a pool of 10 and the default
pool-acquire timeout. Bookings are uncontended (a random event of 2,000, one seat, a fresh guest and request id
each), so the only limit is the service's own capacity.

1. **Max goodput**: closed loop with ``CONCURRENCY`` (< ``LIMIT``: nothing is shed) calls in flight.
2. **2× overload**: open loop at twice that rate for the same window, every request with its own guest; an
   answer is OK (booked) or RESOURCE_EXHAUSTED (shed). Goodput = OK answers per second of the run.

ratio = goodput under 2× overload ÷ max goodput (goal ≥ 0.9: shedding the excess must not cost the admitted
requests their capacity); rejection latency p99 (from each request's scheduled send time, so a client that
fell behind can't hide queueing) ≤ 5 ms. Correctness, checked against the database afterwards: no shed request
booked anyway (``rejected_but_applied``), no OK answer without its booking (``ok_not_applied``), no ``INTERNAL`` /
``UNKNOWN``, no call ending without an answer (``CANCELLED``, ``DEADLINE_EXCEEDED``), no other error. An admitted
booking that timed out waiting for a pool connection (``UNAVAILABLE``) is reported, not counted as incorrect: it is an
answer the client can retry on, and it lowers the goodput. The notes also give the rejection latency from the
actual send and how late the client itself sent (on a loaded box the load generator falls behind too).

``LIMIT`` is 64: twice the closed-loop concurrency, enough in flight to keep the pool of 10 busy, and few enough
that an admitted booking waits well under the pool-acquire timeout at the rates this box reaches.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from cowatch.booking.v1 import resources_pb2, service_pb2, service_pb2_grpc

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
    stats,
)
from tests.bench.scenarios.b4_booking_uncontended import Tokens

ID = "B7"
EVENTS = 2000
CAPACITY = 1000
POOL = 10
LIMIT = 64
CONCURRENCY = 32
OVERLOAD = 2.0
GOAL = 0.9
REJECTION_P99_MS = 5.0

_ANSWERED = {"INTERNAL": "internal", "UNKNOWN": "internal", "CANCELLED": "cancelled", "DEADLINE_EXCEEDED": "cancelled"}


async def run(ctx: BenchContext) -> list[Row]:
    seconds = ctx.seconds(5.0, 0.4)
    concurrency = 8 if ctx.quick else CONCURRENCY
    rng = random.Random(7)
    tag = uuid.uuid4().hex[:6]
    async with ctx.pool(2) as pool:
        event_ids = await seed_events(pool, EVENTS, capacity=CAPACITY, host_prefix="b7-host")
        names = [f"events/{e}" for e in event_ids]
        async with ctx.service(
            "services.booking", db_pool_min_size=POOL, db_pool_max_size=POOL, max_concurrent_rpcs=LIMIT
        ) as svc:
            stubs = [service_pb2_grpc.BookingServiceStub(c) for c in channels(svc.address, 4)]
            tokens = Tokens(ctx, f"b7-{tag}")
            counter = 0

            schedule: dict[str, float] = {}

            async def book(i: int) -> tuple[str, str, float, float]:
                """("ok" | "rejected", guest, seconds from the call's actual send to its answer, how late the
                call was sent after its scheduled time in open loop); any other answer raises (counted by its
                code)."""
                nonlocal counter
                n = counter
                counter += 1
                t0 = time.perf_counter()
                lag = t0 - (schedule["start"] + (i - schedule["first"]) / schedule["rate"]) if schedule else 0.0
                request = service_pb2.CreateBookingRequest(
                    booking=resources_pb2.Booking(event=names[rng.randrange(EVENTS)], seats=1),
                    request_id=str(uuid.uuid4()),
                )
                try:
                    await stubs[n % len(stubs)].CreateBooking(request, metadata=tokens(n), timeout=30)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        return "rejected", f"b7-{tag}-{n}", time.perf_counter() - t0, lag
                    raise
                return "ok", f"b7-{tag}-{n}", time.perf_counter() - t0, lag

            async def timed(kind: str, runner: Callable[[], Any]) -> LoadResult:
                result: LoadResult = await runner()
                ctx.log(
                    f"  {ID} {kind}: {result.stats.rate:,.0f}/s answered p50 {result.stats.p50_ms:.1f} ms "
                    f"p99 {result.stats.p99_ms:.1f} ms errors {result.errors or 0}"
                )
                return result

            tokens.fill(0, 300)
            await closed_loop(book, concurrency=concurrency, seconds=ctx.seconds(1.0, 0.2))  # warm-up
            tokens.fill(counter, int(1500 * seconds))
            maximum = await timed("max closed", lambda: closed_loop(book, concurrency=concurrency, seconds=seconds))
            max_ok = sum(1 for outcome, *_ in maximum.results if outcome == "ok")
            max_goodput = max_ok / maximum.stats.seconds
            offered = OVERLOAD * max_goodput
            first = counter
            tokens.fill(first, int(offered * seconds) + 100)
            schedule.update(start=time.perf_counter(), first=first, rate=offered)
            overload = await timed(
                f"{OVERLOAD:g}x open", lambda: open_loop(book, rate=offered, seconds=seconds, start_index=first)
            )

        outcomes = overload.results
        ok_guests = {guest for outcome, guest, *_ in outcomes if outcome == "ok"}
        rejected_guests = {guest for outcome, guest, *_ in outcomes if outcome == "rejected"}
        timed_outcomes = list(zip((outcome for outcome, *_ in outcomes), overload.latencies, strict=True))
        rejected_latency = [lat for outcome, lat in timed_outcomes if outcome == "rejected"]
        ok_latency = [lat for outcome, lat in timed_outcomes if outcome == "ok"]
        rejected_call = [call for outcome, _, call, _ in outcomes if outcome == "rejected"]
        send_lag = [lag for *_, lag in outcomes]
        booked = {
            r["guest_id"]
            for r in await pool.fetch(
                "SELECT guest_id FROM booking.bookings WHERE guest_id = ANY($1::text[]) AND state = 'CONFIRMED'",
                [*ok_guests, *rejected_guests, *(f"b7-{tag}-{n}" for n in range(first, counter))],
            )
        }

    goodput = len(ok_guests) / overload.stats.seconds
    rejections = stats(rejected_latency, overload.stats.seconds)
    rejections_sent = stats(rejected_call, overload.stats.seconds)
    lag = stats(send_lag, overload.stats.seconds)
    admitted = stats(ok_latency, overload.stats.seconds)
    errors = {**maximum.errors}
    for code, n in overload.errors.items():
        errors[code] = errors.get(code, 0) + n
    correctness = {
        "rejected_but_applied": len(rejected_guests & booked),
        "ok_not_applied": len(ok_guests - booked),
        "internal": sum(n for code, n in errors.items() if _ANSWERED.get(code) == "internal"),
        "cancelled_without_answer": sum(n for code, n in errors.items() if _ANSWERED.get(code) == "cancelled"),
        "other_errors": sum(n for code, n in errors.items() if code not in _ANSWERED and code != "UNAVAILABLE"),
        "shed_in_max_run": sum(1 for outcome, *_ in maximum.results if outcome == "rejected"),
    }
    ratio = goodput / max_goodput if max_goodput else None
    latency_ok = bool(rejected_latency) and rejections.p99_ms <= REJECTION_P99_MS
    met = ratio is not None and ratio >= GOAL and latency_ok
    misses = []
    if ratio is None or ratio < GOAL:
        misses.append(f"goodput ratio MISSED by {GOAL - (ratio or 0):.2f} ({(ratio or 0) / GOAL:.0%} of the goal)")
    if not latency_ok:
        misses.append(f"rejection p99 above {REJECTION_P99_MS:g} ms" if rejected_latency else "nothing was shed")
    notes = (
        ("; ".join(misses) + ". " if misses else "")
        + f"{ctx.pg_description}; max_concurrent_rpcs {LIMIT}, pool {POOL}; max: closed loop, {concurrency} in "
        f"flight, {seconds:g} s; overload: open loop at {offered:,.0f}/s ({OVERLOAD:g}× max) for {seconds:g} s: "
        f"{len(ok_guests):,} booked, {len(rejected_guests):,} shed (RESOURCE_EXHAUSTED); rejections p50 "
        f"{fmt_ms(rejections.p50_ms)} p99 {fmt_ms(rejections.p99_ms)} from the scheduled send (from the actual "
        f"send: p50 {fmt_ms(rejections_sent.p50_ms)} p99 {fmt_ms(rejections_sent.p99_ms)}; the client sent p50 "
        f"{fmt_ms(lag.p50_ms)} p99 {fmt_ms(lag.p99_ms)} late); admitted p50 {fmt_ms(admitted.p50_ms)} "
        f"p99 {fmt_ms(admitted.p99_ms)}; "
        f"{errors.get('UNAVAILABLE', 0)} admitted but timed out waiting for a pool connection (UNAVAILABLE); "
        f"errors {errors or 0}"
    )
    return [
        Row(
            id=ID,
            scenario=f"{OVERLOAD:g}× overload with load shedding (uncontended CreateBooking)",
            cowatch=fmt_rate(goodput, "bookings/s goodput at 2× load"),
            baseline=fmt_rate(max_goodput, "bookings/s max goodput"),
            ratio=ratio,
            goal=f"≥ {GOAL}; rejections p99 ≤ {REJECTION_P99_MS:g} ms",
            met=met,
            notes=notes,
            correctness=correctness,
            data={
                "postgres": ctx.pg_description,
                "max_goodput_per_s": max_goodput,
                "offered_per_s": offered,
                "goodput_per_s": goodput,
                "booked": len(ok_guests),
                "shed": len(rejected_guests),
                "rejections": vars(rejections),
                "rejections_from_actual_send": vars(rejections_sent),
                "client_send_lag": vars(lag),
                "admitted": vars(admitted),
                "errors": errors,
                "limit": LIMIT,
                "concurrency": concurrency,
                "seconds": seconds,
            },
        )
    ]
