"""B3 — uncached ListEvents over 100,000 events vs the identical SQL run directly with asyncpg; page cost at 10^6.

100,000 events (90 % public) over a year, in 50 cities, of 500 films, by 200 hosts, some full. Each request is the
first page (20 events) of one of the common anonymous query shapes — upcoming, by city, by film, by city with free
seats, by host — with a random value. The EventService runs as its own process without Redis (every ListEvents
reaches Postgres) with a pool of ``POOL``; the baseline sends the statement the service builds for the same
request (``services.event.repository.build_list_sql``; checked at start against the SQL the service layer
actually sends) through an asyncpg pool of the same size, with the same number of requests in flight.

Plans: every shape is EXPLAINed on the loaded table; a sequential scan of event.events is a correctness failure.

Second row (B3-scale): does a page cost the same on a 10× bigger catalogue? Samples of the upcoming, free-text (a
film title, the same share of the catalogue at any size) and one-week date-range shapes are EXPLAIN ANALYZEd at
100,000 events; the table is then grown by COPY to 1,000,000 over the same year (10× denser) and ANALYZEd, and the
same samples run again. The buffers each page touched (median per shape; a count the box's load between the two
passes cannot move) are compared, with PostgreSQL's own execution time per page alongside.
Throughput: closed loop, rounds alternating between the two sides (median per side). Latency: open loop at 50 % of
the lower capacity.
"""

from __future__ import annotations

import functools
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import asyncpg
from cowatch.event.v1 import service_pb2, service_pb2_grpc

from services.common.clock import SystemClock
from services.event import repository as events
from services.event.service import EventService, ListEvents
from tests.bench.harness import BenchContext, LoadResult, Row, channels, closed_loop, fmt_ms, fmt_rate, open_loop

ID = "B3"
EVENTS = 100_000
CITIES = 50
FILMS = 500
HOSTS = 200
PAGE = 20
POOL = 10
CONCURRENCY = 32
GOAL = 0.6
SHAPES = ("upcoming", "city", "film", "city_free", "host")
SCALE_SHAPES = ("upcoming", "text", "date_range")
SCALED_EVENTS = 1_000_000
"""B3's second row: the page cost of :data:`SCALE_SHAPES` at this size vs at :data:`EVENTS` (goal ≤ 1.3×)."""
SCALE_GOAL = 1.3
SCALE_SAMPLES = 30


@dataclass(frozen=True)
class Shape:
    kind: str
    city: str | None = None
    film: str | None = None
    host: str | None = None
    free: bool = False
    text: str | None = None
    window: tuple[datetime, datetime] | None = None
    """[from, to) of a date-range shape (``start_time_from`` / ``start_time_to``)."""

    def request(self) -> service_pb2.ListEventsRequest:
        request = service_pb2.ListEventsRequest(
            page_size=PAGE,
            city=self.city or "",
            film_id=self.film or "",
            host=f"users/{self.host}" if self.host else "",
            has_free_seats=self.free,
            query=self.text or "",
        )
        if self.window is not None:
            request.start_time_from.FromDatetime(self.window[0])
            request.start_time_to.FromDatetime(self.window[1])
        return request

    def query(self, now: datetime) -> events.ListQuery:
        return events.ListQuery(
            start_from=self.window[0] if self.window else now,
            start_to=self.window[1] if self.window else None,
            film_id=self.film,
            city=self.city,
            has_free_seats=self.free,
            host_id=self.host,
            own=False,
            text=self.text,
            viewer_id=None,
            after=None,
            limit=PAGE + 1,
        )


def shapes(rng: random.Random, count: int) -> list[Shape]:
    out = []
    for n in range(count):
        kind = SHAPES[n % len(SHAPES)]
        city = f"City {rng.randrange(CITIES)}"
        if kind == "upcoming":
            out.append(Shape(kind))
        elif kind == "city":
            out.append(Shape(kind, city=city))
        elif kind == "film":
            out.append(Shape(kind, film=f"tt{rng.randrange(FILMS):07d}"))
        elif kind == "city_free":
            out.append(Shape(kind, city=city, free=True))
        else:
            out.append(Shape(kind, host=f"b3-host-{rng.randrange(HOSTS)}"))
    return out


def scale_shapes(rng: random.Random, count: int, first: datetime) -> list[Shape]:
    """The shapes whose page cost must stay flat as the catalogue grows: upcoming, free text (a film title:
    the same share of the catalogue at any size) and a one-week date range inside the year seeded."""
    out = []
    for n in range(count):
        kind = SCALE_SHAPES[n % len(SCALE_SHAPES)]
        if kind == "upcoming":
            out.append(Shape(kind))
        elif kind == "text":
            out.append(Shape(kind, text=f"film {rng.randrange(FILMS)}"))
        else:
            start = first + timedelta(days=rng.randrange(300), minutes=rng.randrange(1440))
            out.append(Shape(kind, window=(start, start + timedelta(days=7))))
    return out


EVENT_COLUMNS = [
    "id", "host_id", "film_id", "film_title", "title", "start_time", "end_time", "time_zone",
    "place_name", "place_address", "place_city", "capacity", "seats_taken", "visibility", "invite_token",
]  # fmt: skip


def _event_record(rng: random.Random, hosts: list[str], n: int, start: datetime) -> tuple[Any, ...]:
    capacity = rng.randint(2, 12)
    film = rng.randrange(FILMS)
    return (
        uuid.uuid4(), rng.choice(hosts), f"tt{film:07d}", f"Film {film}", f"Night {n}",
        start, start + timedelta(hours=2), "Europe/Berlin", "Living room", "Somestr. 1",
        f"City {rng.randrange(CITIES)}", capacity, capacity if rng.random() < 0.2 else rng.randint(0, capacity),
        "PUBLIC" if rng.random() < 0.9 else "PRIVATE", "t" * 32,
    )  # fmt: skip


async def grow(pool: asyncpg.Pool, rng: random.Random, first: datetime, total: int) -> None:
    """COPY events until there are ``total``, over the same year as the first :data:`EVENTS` (the catalogue gets
    denser: ``total / EVENTS`` events per 5-minute slot), rebuild the secondary indexes, ANALYZE."""
    hosts = [f"b3-host-{n}" for n in range(HOSTS)]
    per_slot = -(-total // EVENTS)  # events per 5-minute slot once grown (the first one's from seed())
    chunk = 100_000
    async with pool.acquire() as conn:
        # Secondary indexes are dropped for the COPY and built again after it, as a bulk load is done: building
        # the trigram GIN index once is many times faster than maintaining it row by row. Their definitions are
        # read from the catalogue, so they are exactly the migrations' (constraint-backed ones stay).
        definitions = await conn.fetch(
            """SELECT i.indexname, i.indexdef FROM pg_indexes i
               WHERE i.schemaname = 'event' AND i.tablename = 'events'
                 AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"""
        )
        for d in definitions:
            await conn.execute(f'DROP INDEX event."{d["indexname"]}"')
        n = EVENTS
        while n < total:
            records = []
            for m in range(n, min(total, n + chunk)):
                layer, slot = divmod(m - EVENTS, EVENTS)
                start = first + timedelta(minutes=5 * slot, seconds=(layer + 1) * 300 / per_slot)
                records.append(_event_record(rng, hosts, m, start))
            await conn.copy_records_to_table("events", schema_name="event", columns=EVENT_COLUMNS, records=records)
            n += len(records)
        await conn.execute("SET maintenance_work_mem = '256MB'")
        for d in definitions:
            await conn.execute(d["indexdef"])
        await conn.execute("RESET maintenance_work_mem")
        await conn.execute("ANALYZE event.events")


async def seed(pool: asyncpg.Pool, rng: random.Random, first: datetime) -> None:
    hosts = [f"b3-host-{n}" for n in range(HOSTS)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table(
            "users", schema_name="account", columns=["id", "display_name"], records=[(h, f"Host {h}") for h in hosts]
        )
        records = []
        for n in range(EVENTS):
            start = first + timedelta(minutes=5 * n)
            records.append(_event_record(rng, hosts, n, start))
        await conn.copy_records_to_table("events", schema_name="event", columns=EVENT_COLUMNS, records=records)
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE event.events; ANALYZE account.users")


def _walk(plan: dict[str, Any]) -> list[tuple[str, str, str]]:
    found = [(plan.get("Node Type", ""), plan.get("Relation Name", ""), plan.get("Index Name", ""))]
    for child in plan.get("Plans", []):
        found += _walk(child)
    return found


async def plans(pool: asyncpg.Pool, samples: list[Shape]) -> tuple[int, dict[str, str]]:
    """(sequential scans of event.events over one sample per shape, shape → index used)."""
    seq_scans = 0
    used: dict[str, str] = {}
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        for shape in {s.kind: s for s in samples}.values():
            sql, args = events.build_list_sql(shape.query(now))
            raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
            nodes = _walk((json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"])
            seq_scans += sum(1 for node, relation, _ in nodes if node == "Seq Scan" and relation == "events")
            used[shape.kind] = ",".join(
                sorted(
                    {index for node, relation, index in nodes if index and (relation == "events" or "Bitmap" in node)}
                )
            )
    return seq_scans, used


class _Recorder(asyncpg.Connection):
    log: ClassVar[list[str]] = []

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        _Recorder.log.append(" ".join(query.split()))
        return await super().fetch(query, *args, **kwargs)


async def sql_differs(ctx: BenchContext, samples: list[Shape]) -> int:
    """Shapes whose SQL sent by the service layer differs from the baseline's statement."""
    pool = await asyncpg.create_pool(ctx.database_url, min_size=1, max_size=1, connection_class=_Recorder)
    differ = 0
    try:
        service = EventService(pool, SystemClock(), "https://cowatch.bench")
        for shape in {s.kind: s for s in samples}.values():
            _Recorder.log.clear()
            await service.list(
                ListEvents(
                    user=None, page_size=PAGE, page_token="", film_id=shape.film, city=shape.city, start_from=None,
                    start_to=None, has_free_seats=shape.free, host_id=shape.host, text=None,
                )
            )  # fmt: skip
            sql, _ = events.build_list_sql(shape.query(datetime.now(UTC)))
            differ += _Recorder.log != [" ".join(sql.split())]
    finally:
        await pool.close()
    return differ


@dataclass(frozen=True)
class PageCost:
    """Per shape: median execution time (EXPLAIN ANALYZE, ms) and median buffers touched, over the samples."""

    ms: dict[str, float]
    buffers: dict[str, float]
    seq_scans: int


def _buffers(plan: dict[str, Any]) -> int:
    return int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0))


async def page_costs(pool: asyncpg.Pool, samples: list[Shape]) -> PageCost:
    """What one first page costs PostgreSQL, per shape: the statement the service sends, EXPLAIN ANALYZEd
    (server-side execution time: what grows with the table, without the client's and the box's noise), and the
    buffers it touched (a count: the same on an idle and a busy box)."""
    times: dict[str, list[float]] = {}
    buffers: dict[str, list[float]] = {}
    seq_scans = 0
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        for shape in samples:
            sql, args = events.build_list_sql(shape.query(now))
            raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
            top = (json.loads(raw) if isinstance(raw, str) else raw)[0]
            nodes = _walk(top["Plan"])
            seq_scans += sum(1 for node, relation, _ in nodes if node == "Seq Scan" and relation == "events")
            times.setdefault(shape.kind, []).append(float(top["Execution Time"]))
            buffers.setdefault(shape.kind, []).append(_buffers(top["Plan"]))
    return PageCost(
        {k: statistics.median(v) for k, v in times.items()},
        {k: statistics.median(v) for k, v in buffers.items()},
        seq_scans,
    )


async def run(ctx: BenchContext) -> list[Row]:
    seconds = ctx.seconds(5.0, 0.6)
    rounds = 1 if ctx.quick else 3
    concurrency = 8 if ctx.quick else CONCURRENCY
    rng = random.Random(3)
    samples = shapes(rng, 5000)
    first = datetime.now(UTC) + timedelta(days=1)
    scaled = scale_shapes(random.Random(5), len(SCALE_SHAPES) * SCALE_SAMPLES, first)
    scaled_events = EVENTS + EVENTS // 10 if ctx.quick else SCALED_EVENTS
    async with ctx.pool(POOL) as pool:
        started = time.perf_counter()
        await seed(pool, rng, first)
        ctx.log(f"  {ID} seeded {EVENTS:,} events in {time.perf_counter() - started:.1f} s")
        seq_scans, used = await plans(pool, [*samples, *scaled])
        differ = await sql_differs(ctx, samples)

        async with ctx.service(
            "services.event", db_pool_min_size=POOL, db_pool_max_size=POOL, max_concurrent_rpcs=4096
        ) as svc:
            chans = channels(svc.address, 4)
            stubs = [service_pb2_grpc.EventServiceStub(c) for c in chans]
            requests = [s.request() for s in samples]
            rows_seen = {"grpc": 0, "sql": 0}

            async def via_grpc(i: int) -> None:
                reply = await stubs[i % len(stubs)].ListEvents(requests[i % len(requests)], timeout=30)
                rows_seen["grpc"] += len(reply.events)

            async def via_sql(i: int) -> None:
                sql, args = events.build_list_sql(samples[i % len(samples)].query(datetime.now(UTC)))
                async with pool.acquire() as conn:
                    rows = await conn.fetch(sql, *args)
                rows_seen["sql"] += min(len(rows), PAGE)

            async def closed(op: Callable[[int], Any]) -> LoadResult:
                return await closed_loop(op, concurrency=concurrency, seconds=seconds)

            async def measure(kind: str, runner: Callable[[], Any]) -> LoadResult:
                result: LoadResult = await runner()
                ctx.log(
                    f"  {ID} {kind}: {result.stats.rate:,.0f}/s p50 {result.stats.p50_ms:.1f} ms "
                    f"p99 {result.stats.p99_ms:.1f} ms errors {result.errors or 0}"
                )
                return result

            await closed_loop(via_grpc, concurrency=concurrency, seconds=ctx.seconds(1.5, 0.3))
            await closed_loop(via_sql, concurrency=concurrency, seconds=ctx.seconds(1.5, 0.3))
            grpc_runs: list[LoadResult] = []
            sql_runs: list[LoadResult] = []
            for _ in range(rounds):
                sql_runs.append(await measure("sql closed", functools.partial(closed, via_sql)))
                grpc_runs.append(await measure("grpc closed", functools.partial(closed, via_grpc)))
            grpc_rate = statistics.median(r.stats.rate for r in grpc_runs)
            sql_rate = statistics.median(r.stats.rate for r in sql_runs)
            offered = 0.5 * min(grpc_rate, sql_rate)
            sql_open = await measure("sql open", lambda: open_loop(via_sql, rate=offered, seconds=seconds))
            grpc_open = await measure("grpc open", lambda: open_loop(via_grpc, rate=offered, seconds=seconds))

            # --- the second row: the same page at 10x the catalogue
            scaled_requests = [s.request() for s in scaled]

            async def via_grpc_scaled(i: int) -> None:
                await stubs[i % len(stubs)].ListEvents(scaled_requests[i % len(scaled_requests)], timeout=30)

            await page_costs(pool, scaled)  # warm: the same buffers cached for both sizes' first pass
            small = await page_costs(pool, scaled)
            small_grpc = await measure("scale shapes grpc @small", functools.partial(closed, via_grpc_scaled))
            started = time.perf_counter()
            await grow(pool, rng, first, scaled_events)
            grow_seconds = time.perf_counter() - started
            ctx.log(f"  {ID} grew to {scaled_events:,} events (COPY + ANALYZE) in {grow_seconds:.1f} s")
            await page_costs(pool, scaled)
            large = await page_costs(pool, scaled)
            large_grpc = await measure("scale shapes grpc @large", functools.partial(closed, via_grpc_scaled))
            for channel in chans:
                await channel.close()

    errors = sum(sum(r.errors.values()) for r in (*grpc_runs, *sql_runs, grpc_open, sql_open))
    ratio = grpc_rate / sql_rate if sql_rate else None
    met = ratio is not None and ratio >= GOAL
    verdict = "" if met else f"MISSED by {GOAL - (ratio or 0):.2f}. "
    indexes = "; ".join(f"{k}: {v or '—'}" for k, v in used.items())
    notes = (
        f"{verdict}first pages of {PAGE} over {EVENTS:,} events, shapes {'/'.join(SHAPES)} round robin, no Redis; "
        f"closed loop {concurrency} in flight, pool {POOL}, median of {rounds} alternating {seconds:g} s rounds; "
        f"open loop at {offered:,.0f}/s: gRPC p50 {fmt_ms(grpc_open.stats.p50_ms)} "
        f"p99 {fmt_ms(grpc_open.stats.p99_ms)}, "
        f"asyncpg p50 {fmt_ms(sql_open.stats.p50_ms)} p99 {fmt_ms(sql_open.stats.p99_ms)}; plans use {indexes}; "
        f"seq scans {seq_scans}, baseline SQL differs {differ}, errors {errors}"
    )
    # Growth is read on buffers touched (a count the box's load does not move); sub-millisecond execution times
    # at two moments minutes apart on a shared box differ by more than the table's growth does.
    growth = {k: large.buffers[k] / small.buffers[k] if small.buffers[k] else 0.0 for k in SCALE_SHAPES}
    time_growth = {k: large.ms[k] / small.ms[k] if small.ms[k] else 0.0 for k in SCALE_SHAPES}
    worst = max(growth.values())
    scale_met = worst <= SCALE_GOAL and large.seq_scans == 0
    scale_errors = sum(small_grpc.errors.values()) + sum(large_grpc.errors.values())
    per_shape = "; ".join(
        f"{k}: buffers {small.buffers[k]:,.0f} → {large.buffers[k]:,.0f} ({growth[k]:.2f}×), "
        f"{small.ms[k]:.2f} → {large.ms[k]:.2f} ms ({time_growth[k]:.2f}×)"
        for k in SCALE_SHAPES
    )
    scale_notes = (
        f"{'' if scale_met else f'MISSED: worst growth {worst:.2f}× > {SCALE_GOAL}×. '}buffers touched and "
        f"execution time (EXPLAIN ANALYZE, medians of {SCALE_SAMPLES} samples per shape) of a first page at "
        f"{EVENTS:,} → "
        f"{scaled_events:,} events (same year, {scaled_events / EVENTS:g}× denser): {per_shape}; the same shapes "
        f"through gRPC {small_grpc.stats.rate:,.0f} → {large_grpc.stats.rate:,.0f} pages/s; grown by COPY + ANALYZE in "
        f"{grow_seconds:.0f} s; seq scans {large.seq_scans}, errors {scale_errors}"
    )
    return [
        Row(
            id=ID,
            scenario="uncached ListEvents, 100,000 events",
            cowatch=fmt_rate(grpc_rate, "pages/s"),
            baseline=fmt_rate(sql_rate, "pages/s") + " (same SQL, asyncpg)",
            ratio=ratio,
            goal=f"≥ {GOAL}",
            met=met,
            notes=notes,
            correctness={"errors": errors, "seq_scans": seq_scans, "baseline_sql_differs": differ},
            data={
                "grpc_rates": [r.stats.rate for r in grpc_runs],
                "sql_rates": [r.stats.rate for r in sql_runs],
                "offered_rate": offered,
                "grpc_open": vars(grpc_open.stats),
                "sql_open": vars(sql_open.stats),
                "indexes": used,
                "rows": rows_seen,
                "concurrency": concurrency,
                "pool": POOL,
                "seconds": seconds,
                "rounds": rounds,
            },
        ),
        Row(
            id=f"{ID}-scale",
            scenario=f"ListEvents page cost at {scaled_events:,} vs {EVENTS:,} events (upcoming, text, date range)",
            cowatch=f"{max(large.buffers.values()):,.0f} buffers/page (worst shape)",
            baseline=f"{max(small.buffers.values()):,.0f} buffers/page at {EVENTS:,}",
            ratio=worst,
            goal=f"≤ {SCALE_GOAL}× (cost growth)",
            met=scale_met,
            notes=scale_notes,
            correctness={"errors": scale_errors, "seq_scans": large.seq_scans + small.seq_scans},
            data={
                "ms": {"small": small.ms, "large": large.ms},
                "buffers": {"small": small.buffers, "large": large.buffers},
                "grpc_rates": {"small": small_grpc.stats.rate, "large": large_grpc.stats.rate},
                "events": {"small": EVENTS, "large": scaled_events},
                "grow_seconds": grow_seconds,
            },
        ),
    ]
