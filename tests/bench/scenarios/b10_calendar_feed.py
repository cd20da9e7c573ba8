"""B10 — the calendar feed's cost for a user with 200 events: a full answer (validator, rows, iCalendar rendering)
and a calendar app's poll of an unchanged feed (``If-None-Match`` matches: the validator statement only, an empty
answer that Envoy turns into a 304), and an unchanged feed fetched without ``If-None-Match`` (as some calendar apps
always do) from a second EventService process that has Redis: the validator, then the body from the cache.

Set-up: one reader hosting 120 events and holding confirmed bookings of 80 events of another host (all scheduled,
Europe/Berlin, a month ahead), a calendar token from RotateCalendarToken. One EventService process without Redis
(production settings, INFO logs, pool ``POOL``: every full answer renders) and one with Redis (the cached row), each
called over native gRPC on 4 HTTP/2 connections — the gateway's own cost is B6's subject, and the Lua filter that
makes the 304 is a header check. Polls: ``CONCURRENCY`` calls in flight;
full answers: ``FULL_CONCURRENCY`` (rendering runs on one thread per process; more in flight would only queue),
in windows twice as long; each baseline with its side's concurrency.

Baselines, from the same run with the same concurrency and pool size, rounds alternating: **the same SQL through
asyncpg** — for a full answer the feed's two statements (validator, then the rows), for a poll the validator
alone. That is the floor the service can't go below (the database work it must do), so the ratio says what the
service adds on top: gRPC, the interceptors and, for a full answer, mapping and rendering 200 VEVENTs with their
VTIMEZONE. The statements the service sends for one full answer and one poll are recorded first and compared with
the baseline's (``baseline_sql_differs``). The poll's speed-up over a full answer is in the notes.

QUICK=1 keeps it a seconds-long smoke run: 20 events (12 + 8), 2 calls in flight, no warm-up, 0.5 s windows (a
200-event answer alone takes most of a second on a busy 2-core box).

Correctness, under a writer renaming one of the reader's events every second while ``POLLERS`` pollers poll with
the ETag they last got (a calendar app each): ``stale_304`` — a 304 for an ETag that cannot include a write
acknowledged before the poll began; ``same_etag_full`` — a full answer carrying the very ETag the poller sent (a
missed match); ``wrong_feed`` — after the writer stops, the final feed doesn't list exactly the seeded events with
the last title, or its ETag doesn't answer the next poll with a 304. Then again against the Redis-backed process,
every other poll without ``If-None-Match``: ``stale_body`` — such an answer (from the cache or rendered) whose
renamed title is older than the last rename acknowledged before the request began.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
from cowatch.event.v1 import service_pb2, service_pb2_grpc
from google.protobuf import field_mask_pb2
from icalendar import Calendar

from services.common.clock import SystemClock
from services.event import repository as events
from services.event.service import CALENDAR_KEEP, CALENDAR_MAX_EVENTS, CalendarItem, EventService
from tests.bench.harness import (
    BenchContext,
    LoadResult,
    Op,
    Row,
    channels,
    closed_loop,
    fmt_ms,
    fmt_rate,
    seed_events,
)
from tests.bench.scenarios.b2_cached_reads import redis_for_bench

ID = "B10"
HOSTED, BOOKED = 120, 80
QUICK_HOSTED, QUICK_BOOKED = 12, 8  # QUICK: a tenth, so that its few renders take well under a second
CONCURRENCY = 8  # polls and their baseline
FULL_CONCURRENCY = 2  # full answers and theirs: rendering is CPU-bound on one thread, more in flight only queue
POLLERS = 4
POOL = 10
FULL_GOAL = 0.1  # a full answer renders 200 VEVENTs in Python: it may cost 10× the SQL, not more
POLL_GOAL = 0.5  # a poll is the validator statement plus gRPC: at least half the bare statement's rate
CACHED_GOAL = 0.25  # a cached answer adds a Redis read and a ~160 kB body to a poll: a quarter of the statement's
WRITE_EVERY = 1.0  # a change now and then: most polls are 304s, some see a change


class _Recorder(asyncpg.Connection):
    """Logs the statements sent through fetch/fetchrow (the service's reads)."""

    log: ClassVar[list[str]] = []

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        _Recorder.log.append(" ".join(query.split()))
        return await super().fetch(query, *args, **kwargs)

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        _Recorder.log.append(" ".join(query.split()))
        return await super().fetchrow(query, *args, **kwargs)


def _norm(sql: str) -> str:
    return " ".join(sql.split())


async def _sized(items: list[CalendarItem]) -> bytes:
    """A stand-in renderer: the statements are what is recorded here."""
    return str(len(items)).encode()


async def sql_differs(ctx: BenchContext, token: str, etag: str) -> int:
    """1 for each of the full answer and the poll whose statements differ from the baseline's."""
    pool = await asyncpg.create_pool(ctx.database_url, min_size=1, max_size=1, connection_class=_Recorder)
    try:
        service = EventService(pool, SystemClock(), "https://cowatch.bench")
        _Recorder.log.clear()
        await service.calendar(token, _sized)
        full = _Recorder.log != [_norm(events.CALENDAR_VALIDATOR), _norm(events.CALENDAR_EVENTS)]
        _Recorder.log.clear()
        fresh = await service.calendar(token, _sized, etag)
        poll = fresh.body is not None or _Recorder.log != [_norm(events.CALENDAR_VALIDATOR)]
    finally:
        await pool.close()
    return int(full) + int(poll)


async def seed(pool: asyncpg.Pool, hosting: int, booking: int) -> tuple[str, list[uuid.UUID]]:
    """The reader (host of ``hosting`` events, guest of ``booking`` more); their id and hosted events."""
    hosted = await seed_events(pool, hosting, capacity=10, host_prefix="b10-reader")
    others = await seed_events(pool, booking, capacity=10, host_prefix="b10-other")
    reader: str = await pool.fetchval("SELECT host_id FROM event.events WHERE id = $1", hosted[0])
    async with pool.acquire() as conn, conn.transaction():
        # The other host's events start where the reader's end: no two overlap, as booking requires.
        await conn.execute(
            "UPDATE event.events SET start_time = start_time + interval '30 days', "
            "end_time = end_time + interval '30 days' WHERE id = ANY($1::uuid[])",
            others,
        )
        await conn.executemany(
            "INSERT INTO booking.bookings (id, event_id, guest_id, seats) VALUES ($1, $2, $3, 1)",
            [(uuid.uuid4(), e, reader) for e in others],
        )
        await conn.execute("UPDATE event.events SET seats_taken = 1 WHERE id = ANY($1::uuid[])", others)
    return reader, hosted


def sizes(ctx: BenchContext) -> tuple[int, int]:
    return (QUICK_HOSTED, QUICK_BOOKED) if ctx.quick else (HOSTED, BOOKED)


async def run(ctx: BenchContext) -> list[Row]:
    seconds = ctx.seconds(5.0, 0.5)
    rounds = 1 if ctx.quick else 3
    concurrency = 2 if ctx.quick else CONCURRENCY
    async with ctx.pool(POOL) as pool:
        t0 = time.perf_counter()
        reader, hosted = await seed(pool, *sizes(ctx))
        ctx.log(f"  {ID} seeded {sum(sizes(ctx))} events in {time.perf_counter() - t0:.1f} s")
        settings: dict[str, Any] = {"db_pool_min_size": POOL, "db_pool_max_size": POOL, "max_concurrent_rpcs": 4096}
        async with (
            redis_for_bench() as (redis_url, prefix),
            ctx.service("services.event", **settings) as svc,
            ctx.service("services.event", redis_url=redis_url, redis_key_prefix=prefix, **settings) as cached_svc,
        ):
            chans = channels(svc.address, 4)
            cached_chans = channels(cached_svc.address, 4)
            try:
                stubs = [service_pb2_grpc.EventServiceStub(c) for c in chans]
                cached = [service_pb2_grpc.EventServiceStub(c) for c in cached_chans]
                return await _measure(ctx, pool, stubs, cached, reader, hosted, seconds, rounds, concurrency)
            finally:
                for channel in chans + cached_chans:
                    await channel.close()


async def _measure(
    ctx: BenchContext,
    pool: asyncpg.Pool,
    stubs: list[service_pb2_grpc.EventServiceAsyncStub],
    cached: list[service_pb2_grpc.EventServiceAsyncStub],
    reader: str,
    hosted: list[uuid.UUID],
    seconds: float,
    rounds: int,
    concurrency: int,
) -> list[Row]:
    me = ctx.metadata(reader, "Bench Host")
    token = (await stubs[0].RotateCalendarToken(service_pb2.RotateCalendarTokenRequest(), metadata=me)).token
    request = service_pb2.GetCalendarRequest(token=token)
    first = stubs[0].GetCalendar(request, timeout=30)
    body = await first
    etag = str(dict(await first.initial_metadata())["etag"])
    listed = len(Calendar.from_ical(body.data).walk("VEVENT"))
    differ = await sql_differs(ctx, token, etag)
    ctx.log(f"  {ID} first feed {len(body.data):,} bytes, {listed} VEVENTs; statements recorded")
    token_hash = hashlib.sha256(token.encode()).digest()

    def window() -> tuple[datetime, datetime]:
        now = datetime.now(UTC)
        return now, now - CALENDAR_KEEP

    async def full(i: int) -> None:
        answer = await stubs[i % len(stubs)].GetCalendar(request, timeout=30)
        if not answer.data:
            raise RuntimeError("an empty full answer")

    async def from_cache(i: int) -> None:
        answer = await cached[i % len(cached)].GetCalendar(request, timeout=30)
        if answer.data != cached_body:
            raise RuntimeError("an unchanged feed's answer differs from its cached body")

    async def poll(i: int) -> None:
        call = stubs[i % len(stubs)].GetCalendar(request, metadata=(("if-none-match", etag),), timeout=30)
        if (await call).data:
            raise RuntimeError("a full answer to a poll of an unchanged feed")

    async def sql_full(i: int) -> None:
        now, since = window()
        async with pool.acquire() as conn:
            row = await conn.fetchrow(events.CALENDAR_VALIDATOR, token_hash, now, since, CALENDAR_MAX_EVENTS)
            assert row is not None
            await conn.fetch(events.CALENDAR_EVENTS, row["user_id"], now, since, CALENDAR_MAX_EVENTS)

    async def sql_poll(i: int) -> None:
        now, since = window()
        await pool.fetchrow(events.CALENDAR_VALIDATOR, token_hash, now, since, CALENDAR_MAX_EVENTS)

    # The Redis-backed process: its first answer renders and stores the body (in the background), the next ones
    # are served from the cache; every later answer must be those very bytes (DTSTAMP included).
    cached_body = (await cached[0].GetCalendar(request, timeout=30)).data
    await asyncio.sleep(0.5)
    sides: dict[str, Op] = {
        "full": full,
        "sql_full": sql_full,
        "poll": poll,
        "sql_poll": sql_poll,
        "cached": from_cache,
    }
    in_flight = {kind: min(concurrency, FULL_CONCURRENCY) if "full" in kind else concurrency for kind in sides}
    for kind, side in () if ctx.quick else sides.items():  # warm-up: connections, prepared statements
        await closed_loop(side, concurrency=in_flight[kind], seconds=1.0)
    runs: dict[str, list[LoadResult]] = {kind: [] for kind in sides}
    for _ in range(rounds):
        for kind, side in sides.items():
            # Full answers take a while: a longer window so that each round completes dozens of them.
            span = seconds * (2 if "full" in kind else 1)
            result = await closed_loop(side, concurrency=in_flight[kind], seconds=span)
            ctx.log(
                f"  {ID} {kind}: {result.stats.rate:,.0f}/s p50 {result.stats.p50_ms:.2f} ms "
                f"p99 {result.stats.p99_ms:.2f} ms errors {result.errors or 0}"
            )
            runs[kind].append(result)
    rate = {kind: statistics.median(r.stats.rate for r in results) for kind, results in runs.items()}
    closed = {kind: min(results, key=lambda r: abs(r.stats.rate - rate[kind])) for kind, results in runs.items()}
    errors = sum(sum(r.errors.values()) for results in runs.values() for r in results)
    checks = await _under_writes(ctx, stubs, request, me, hosted[0], 2 * seconds, min(concurrency, POLLERS))
    errors += checks.pop("errors")
    # Again against the Redis-backed process, every other poll without If-None-Match (a body from the cache).
    cached_checks = await _under_writes(
        ctx, cached, request, me, hosted[0], 2 * seconds, min(concurrency, POLLERS), plain_every=2
    )
    errors += cached_checks.pop("errors")
    for key in ("stale_304", "same_etag_full", "wrong_feed", "stale_body"):
        checks[key] = checks.get(key, 0) + cached_checks[key]
    checks["wrong_feed"] += int(listed != sum(sizes(ctx)))

    full_ratio = rate["full"] / rate["sql_full"] if rate["sql_full"] else 0.0
    poll_ratio = rate["poll"] / rate["sql_poll"] if rate["sql_poll"] else 0.0
    speedup = rate["poll"] / rate["full"] if rate["full"] else 0.0
    cached_ratio = rate["cached"] / rate["sql_poll"] if rate["sql_poll"] else 0.0
    cached_speedup = rate["cached"] / rate["full"] if rate["full"] else 0.0
    correctness = {"errors": errors, "baseline_sql_differs": differ, **checks}
    common = (
        f"{sizes(ctx)[0]} hosted + {sizes(ctx)[1]} booked events, native gRPC, closed loop on 4 connections, "
        f"pool {POOL}, median of {rounds} alternating rounds ({seconds:g} s, full answers {2 * seconds:g} s); "
        f"1 service process, PostgreSQL and the client share {ctx.cpu_count} CPUs"
    )
    full_stats, sql_stats = closed["full"].stats, closed["sql_full"].stats
    full_notes = (
        f"{'' if full_ratio >= FULL_GOAL else f'MISSED: ratio {full_ratio:.2f} < {FULL_GOAL}. '}"
        f"GetCalendar without If-None-Match ({len(body.data):,} bytes), {in_flight['full']} in flight: "
        f"p50 {fmt_ms(full_stats.p50_ms)} p99 {fmt_ms(full_stats.p99_ms)}; the same two statements via asyncpg "
        f"p50 {fmt_ms(sql_stats.p50_ms)} p99 {fmt_ms(sql_stats.p99_ms)}; {common}"
    )
    poll_notes = (
        f"{'' if poll_ratio >= POLL_GOAL else f'MISSED: ratio {poll_ratio:.2f} < {POLL_GOAL}. '}"
        f"GetCalendar with a matching If-None-Match (empty answer; a 304 through Envoy), {in_flight['poll']} in "
        f"flight: {speedup:.0f}× the full answer's rate; p50 {fmt_ms(closed['poll'].stats.p50_ms)} "
        f"p99 {fmt_ms(closed['poll'].stats.p99_ms)}; the validator statement via asyncpg p50 "
        f"{fmt_ms(closed['sql_poll'].stats.p50_ms)} p99 {fmt_ms(closed['sql_poll'].stats.p99_ms)}; {common}; "
        f"under a writer every {WRITE_EVERY:g} s: {checks['polls']} polls, {checks['changes_seen']} "
        f"changes seen"
    )
    cached_notes = (
        f"{'' if cached_ratio >= CACHED_GOAL else f'MISSED: ratio {cached_ratio:.2f} < {CACHED_GOAL}. '}"
        f"GetCalendar without If-None-Match on an EventService with Redis, feed unchanged: the validator, one "
        f"cache read, the {len(cached_body):,}-byte body unzipped and sent; {in_flight['cached']} in flight: "
        f"{cached_speedup:.0f}× the rendered answer's rate; p50 {fmt_ms(closed['cached'].stats.p50_ms)} "
        f"p99 {fmt_ms(closed['cached'].stats.p99_ms)}; baseline: the validator statement via asyncpg; {common}; "
        f"under a writer every {WRITE_EVERY:g} s, every other poll without If-None-Match: {cached_checks['polls']} "
        f"polls, {cached_checks['changes_seen']} changes seen, stale_body counts a body older than a write "
        f"acknowledged before its request"
    )
    correct = {k: v for k, v in correctness.items() if k not in ("polls", "changes_seen")}
    data = {
        "rates": rate,
        "closed": {k: vars(v.stats) for k, v in closed.items()},
        "concurrency": in_flight,
        "seconds": seconds,
        "rounds": rounds,
        "feed_bytes": len(body.data),
        "started": time.time(),
    }
    return [
        Row(
            id=ID,
            scenario="calendar feed, 200 events, full answer (rendered)",
            cowatch=fmt_rate(rate["full"], "feeds/s"),
            baseline=fmt_rate(rate["sql_full"], "/s") + " (same 2 statements, asyncpg)",
            ratio=full_ratio,
            goal=f"≥ {FULL_GOAL}",
            met=full_ratio >= FULL_GOAL,
            notes=full_notes,
            correctness=correct,
            data=data,
        ),
        Row(
            id=f"{ID}/304",
            scenario="calendar feed, 200 events, poll of an unchanged feed (If-None-Match → 304)",
            cowatch=fmt_rate(rate["poll"], "polls/s"),
            baseline=fmt_rate(rate["sql_poll"], "/s") + " (validator statement, asyncpg)",
            ratio=poll_ratio,
            goal=f"≥ {POLL_GOAL}",
            met=poll_ratio >= POLL_GOAL,
            notes=poll_notes,
            correctness=correct,
            data={**data, "polls_under_writes": checks["polls"], "changes_seen": checks["changes_seen"]},
        ),
        Row(
            id=f"{ID}/cached",
            scenario="calendar feed, 200 events, unchanged, GET without If-None-Match (body from Redis)",
            cowatch=fmt_rate(rate["cached"], "feeds/s"),
            baseline=fmt_rate(rate["sql_poll"], "/s") + " (validator statement, asyncpg)",
            ratio=cached_ratio,
            goal=f"≥ {CACHED_GOAL}",
            met=cached_ratio >= CACHED_GOAL,
            notes=cached_notes,
            correctness=correct,
            data={**data, "polls_under_writes": cached_checks["polls"], "changes_seen": cached_checks["changes_seen"]},
        ),
    ]


async def _under_writes(
    ctx: BenchContext,
    stubs: list[service_pb2_grpc.EventServiceAsyncStub],
    request: service_pb2.GetCalendarRequest,
    me: tuple[tuple[str, str], ...],
    event_id: uuid.UUID,
    seconds: float,
    concurrency: int,
    plain_every: int = 0,
) -> dict[str, int]:
    """Pollers (each a calendar app holding its last ETag) against a writer renaming one of the reader's events.

    ``started``/``acked`` count the writer's renames begun/acknowledged. A full answer received when ``started``
    was n can include at most n renames; a poll begun when ``acked`` was m must see m. So a 304 for an ETag whose
    answer arrived when ``started`` < m is stale for sure (no false alarm: concurrency only widens the bounds).

    With ``plain_every`` = k, every k-th poll of a poller sends no ``If-None-Match`` (a calendar app that never
    does: with Redis, the cached body): ``stale_body`` counts such a body whose renamed title is older than the
    rename acknowledged when the poll began."""
    started = acked = 0
    includes: dict[str, int] = {}  # ETag → the most renames its answer can include
    counts = {"errors": 0, "stale_304": 0, "same_etag_full": 0, "wrong_feed": 0, "stale_body": 0}
    counts |= {"polls": 0, "changes_seen": 0}
    stop = asyncio.Event()
    name = f"events/{event_id}"

    def title(n: int) -> str:
        return f"Solaris night, take {n}"

    async def writer() -> None:
        nonlocal started, acked
        while not stop.is_set():
            started += 1
            update = service_pb2.UpdateEventRequest(update_mask=field_mask_pb2.FieldMask(paths=["title"]))
            update.event.name = name
            update.event.title = title(started)
            try:
                await stubs[0].UpdateEvent(update, metadata=me, timeout=30)
            except Exception:
                counts["errors"] += 1
            acked = started
            await asyncio.sleep(WRITE_EVERY)

    async def poller(k: int) -> None:
        held = ""
        n = 0
        while not stop.is_set():
            acked_at_start = acked
            n += 1
            plain = plain_every > 0 and n % plain_every == 0
            metadata = (("if-none-match", held),) if held and not plain else None
            call = stubs[k % len(stubs)].GetCalendar(request, metadata=metadata, timeout=30)
            try:
                body = await call
                etag = str(dict(await call.initial_metadata())["etag"])
            except Exception:
                counts["errors"] += 1
                continue
            counts["polls"] += 1
            if not body.data:
                counts["stale_304"] += int(includes.get(held, 0) < acked_at_start)
                continue
            if plain:
                unfolded = body.data.replace(b"\r\n ", b"")
                seen = [int(m) for m in re.findall(rb"SUMMARY:Solaris night\\, take (\d+)", unfolded)]
                counts["stale_body"] += int(acked_at_start > 0 and (not seen or max(seen) < acked_at_start))
                includes[etag] = max(includes.get(etag, 0), started)
                continue
            counts["same_etag_full"] += int(bool(held) and etag == held)
            counts["changes_seen"] += int(bool(held))
            includes[etag] = max(includes.get(etag, 0), started)
            held = etag

    tasks = [asyncio.create_task(writer()), *(asyncio.create_task(poller(k)) for k in range(concurrency))]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)

    # Quiet now: the feed lists every event once, with the last title, and its ETag answers the next poll.
    call = stubs[0].GetCalendar(request, timeout=30)
    body = await call
    etag = str(dict(await call.initial_metadata())["etag"])
    vevents = Calendar.from_ical(body.data).walk("VEVENT")
    titles = {str(v["uid"]): str(v["summary"]) for v in vevents}
    ok = len(vevents) == sum(sizes(ctx)) and titles.get(f"{event_id}@cowatch", "").startswith(title(started))
    again = await stubs[1 % len(stubs)].GetCalendar(request, metadata=(("if-none-match", etag),), timeout=30)
    counts["wrong_feed"] += int(not ok) + int(bool(again.data))
    ctx.log(f"  {ID} under writes: {started} renames, {counts}")
    return counts
