"""B8 — the outbox relay: how fast the worker delivers compared with how fast bookings can create mail, and how
long a message takes from its transaction to the notification service.

Processes, as in production: BookingService (``python -m services.booking``), the notification worker
(``python -m services.notification.worker``, default settings) and the notification stand-in
(``python -m services.notification.standin --record FILE``, logging at WARNING: it stands for an external
service whose own cost is not ours). Every booking writes two outbox rows (confirmation to the guest, "new
guest" to the host).

1. **Peak booking rate**: closed loop, ``CONCURRENCY`` in flight, fresh guest per booking, worker stopped.
2. **Relay throughput**: start the worker on the backlog phase 1 left; messages per second from its first to its
   last acknowledgement (the rows' ``sent_time``).
   ratio = relay messages/s ÷ (peak bookings/s × 2 messages per booking): how many times over the relay keeps
   up with the mail that bookings at their peak create. Goal ≥ 2.
3. **Lag**: worker running, bookings in open loop at 50 % of the peak rate; per message, from its booking
   transaction (the row's ``create_time``: the transaction's start, so a little before the commit) to the
   stand-in receiving it. Goal p99 ≤ 1 s.

Correctness (must be 0): bookings that failed, messages never received, keys accepted as new twice, dead letters.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
from cowatch.booking.v1 import resources_pb2, service_pb2, service_pb2_grpc

from services.dev.processes import free_port
from tests.bench.harness import (
    BenchContext,
    LoadResult,
    Row,
    ServiceProcess,
    channels,
    closed_loop,
    fmt_ms,
    fmt_rate,
    open_loop,
    percentile,
    seed_events,
)

ID = "B8"
EVENTS = 2000
CAPACITY = 1000
POOL = 10
CONCURRENCY = 32
MESSAGES_PER_BOOKING = 2
RATIO_GOAL = 2.0
P99_GOAL_MS = 1000.0


@contextmanager
def process(module: str, env: dict[str, str], ctx: BenchContext, port: int = 0) -> Iterator[ServiceProcess]:
    name = module.rsplit(".", 1)[-1]
    proc = ServiceProcess(module, env, port, ctx.results_dir / f"b8-{name}.log")
    try:
        yield proc
    finally:
        proc.stop()  # SIGTERM: the worker finishes its batch, the stand-in flushes its record


async def wait_drained(pool: asyncpg.Pool, within: float) -> None:
    deadline = time.monotonic() + within
    while await pool.fetchval("SELECT count(*) FROM notify.outbox WHERE state = 'PENDING'"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the outbox did not drain within {within:.0f} s")
        await asyncio.sleep(0.05)


async def max_id(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(max(id), 0) FROM notify.outbox"))


async def run(ctx: BenchContext) -> list[Row]:
    seconds = ctx.seconds(8.0, 0.6)
    concurrency = 8 if ctx.quick else CONCURRENCY
    rng = random.Random(8)
    record = ctx.results_dir / "b8-standin.jsonl"
    record.unlink(missing_ok=True)
    standin_port = free_port()
    standin_env = {"COWATCH_STANDIN_PORT": str(standin_port), "COWATCH_STANDIN_RECORD": str(record)}
    standin_env["COWATCH_LOG_LEVEL"] = "WARNING"
    worker_env = ctx.service_env(notification_address=f"127.0.0.1:{standin_port}")

    async with ctx.pool(4) as pool:
        event_ids = await seed_events(pool, EVENTS, capacity=CAPACITY, host_prefix="b8-host")
        names = [f"events/{e}" for e in event_ids]
        with process("services.notification.standin", standin_env, ctx, standin_port) as standin:
            await standin.wait_serving()
            async with ctx.service(
                "services.booking",
                db_pool_min_size=POOL,
                db_pool_max_size=POOL,
                max_concurrent_rpcs=4096,
                db_acquire_timeout_seconds=30,
            ) as svc:
                stubs = [service_pb2_grpc.BookingServiceStub(c) for c in channels(svc.address, 4)]
                prefix = f"b8-{uuid.uuid4().hex[:6]}"
                presigned = 4000 if ctx.quick else 60_000  # JWT signing stays out of the measurement
                tokens = [ctx.metadata(f"{prefix}-{i}", "Bench Guest") for i in range(presigned)]
                counter = {"n": 0}

                async def book(_: int) -> None:
                    n = counter["n"]
                    counter["n"] += 1
                    metadata = tokens[n] if n < len(tokens) else ctx.metadata(f"{prefix}-{n}", "Bench Guest")
                    request = service_pb2.CreateBookingRequest(
                        booking=resources_pb2.Booking(event=names[rng.randrange(EVENTS)], seats=1),
                        request_id=str(uuid.uuid4()),
                    )
                    await stubs[n % len(stubs)].CreateBooking(request, metadata=metadata, timeout=30)

                # warm-up (its mail is relayed in phase 2 too)
                await closed_loop(book, concurrency=concurrency, seconds=ctx.seconds(1.0, 0.2))

                # 1. peak booking rate, nothing relaying
                peak: LoadResult = await closed_loop(book, concurrency=concurrency, seconds=seconds)
                peak_rate = peak.stats.rate
                ctx.log(f"  {ID} peak bookings: {peak_rate:,.0f}/s errors {peak.errors or 0}")
                backlog_last = await max_id(pool)
                backlog = int(await pool.fetchval("SELECT count(*) FROM notify.outbox WHERE id <= $1", backlog_last))

                with process("services.notification.worker", worker_env, ctx):
                    # 2. relay throughput on that backlog
                    await wait_drained(pool, within=600)
                    row = await pool.fetchrow(
                        "SELECT count(*) AS n, extract(epoch FROM max(sent_time) - min(sent_time))::float8 AS span "
                        "FROM notify.outbox WHERE id <= $1 AND state = 'SENT'",
                        backlog_last,
                    )
                    relay_rate = row["n"] / row["span"] if row is not None and row["span"] else 0.0
                    ctx.log(f"  {ID} relay: {relay_rate:,.0f} messages/s over a backlog of {backlog:,}")

                    # 3. lag at 50 % of the peak booking rate
                    offered = 0.5 * peak_rate
                    lag_first = await max_id(pool) + 1
                    steady: LoadResult = await open_loop(book, rate=offered, seconds=seconds)
                    await wait_drained(pool, within=120)
                    lag_last = await max_id(pool)

        # the stand-in has stopped: its record is complete
        created = {
            r["dedupe_key"]: r["created"]
            for r in await pool.fetch(
                "SELECT dedupe_key, extract(epoch FROM create_time)::float8 AS created FROM notify.outbox "
                "WHERE id BETWEEN $1 AND $2",
                lag_first,
                lag_last,
            )
        }
        all_keys = {r["dedupe_key"] for r in await pool.fetch("SELECT dedupe_key FROM notify.outbox")}
        dead = int(await pool.fetchval("SELECT count(*) FROM notify.outbox WHERE state = 'DEAD'"))

    first_seen: dict[str, float] = {}
    accepted: dict[str, int] = {}
    repeats = 0
    for line in record.read_text().splitlines():
        entry: dict[str, Any] = json.loads(line)
        if entry["duplicate"]:
            repeats += 1
            continue
        accepted[entry["key"]] = accepted.get(entry["key"], 0) + 1
        first_seen.setdefault(entry["key"], entry["received_at"])
    lags = sorted(first_seen[k] - t for k, t in created.items() if k in first_seen)
    lost = len(all_keys - set(first_seen))
    twice = sum(1 for n in accepted.values() if n > 1)
    errors = sum(peak.errors.values()) + sum(steady.errors.values())

    message_rate = peak_rate * MESSAGES_PER_BOOKING
    ratio = relay_rate / message_rate if message_rate else None
    p50 = percentile(lags, 0.50) * 1000
    p99 = percentile(lags, 0.99) * 1000
    met = ratio is not None and ratio >= RATIO_GOAL and p99 <= P99_GOAL_MS
    misses = []
    if ratio is None or ratio < RATIO_GOAL:
        misses.append(f"throughput ratio {ratio or 0:.2f} < {RATIO_GOAL:g}")
    if not p99 <= P99_GOAL_MS:
        misses.append(f"p99 lag {p99:.0f} ms > {P99_GOAL_MS:.0f} ms")
    verdict = f"MISSED: {'; '.join(misses)}. " if misses else ""
    notes = (
        f"{verdict}relay {relay_rate:,.0f} msg/s on a backlog of {backlog:,} vs peak booking "
        f"{peak_rate:,.0f}/s × {MESSAGES_PER_BOOKING} msg = {message_rate:,.0f} msg/s ({concurrency} in flight); "
        f"lag commit→delivery at {offered:,.0f} bookings/s (50 % of peak, open loop, {len(lags):,} msgs): "
        f"p50 {fmt_ms(p50)}, p99 {fmt_ms(p99)}, max {fmt_ms(lags[-1] * 1000 if lags else float('nan'))}; "
        f"repeats acknowledged as duplicates {repeats}, lost {lost}, delivered twice {twice}, dead {dead}, "
        f"booking errors {errors}"
    )
    return [
        Row(
            id=ID,
            scenario="outbox relay throughput and notification lag",
            cowatch=fmt_rate(relay_rate, "msg/s") + f", lag p99 {fmt_ms(p99)}",
            baseline=fmt_rate(message_rate, "msg/s") + " (peak bookings × 2)",
            ratio=ratio,
            goal=f"≥ {RATIO_GOAL:g}× and p99 ≤ {P99_GOAL_MS / 1000:g} s",
            met=met,
            notes=notes,
            correctness={"lost_messages": lost, "duplicated_messages": twice, "dead_letters": dead, "errors": errors},
            data={
                "peak_bookings_per_s": peak_rate,
                "relay_messages_per_s": relay_rate,
                "backlog": backlog,
                "offered_bookings_per_s": offered,
                "lag_ms": {"p50": p50, "p99": p99, "max": lags[-1] * 1000 if lags else None, "count": len(lags)},
                "repeats": repeats,
                "seconds": seconds,
                "concurrency": concurrency,
            },
        )
    ]
