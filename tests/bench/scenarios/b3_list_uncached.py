"""B3 — uncached ListEvents over 100,000 events vs the identical SQL run directly with asyncpg.

100,000 events (90 % public) over a year, in 50 cities, of 500 films, by 200 hosts, some full. Each request is the
first page (20 events) of one of the common anonymous query shapes — upcoming, by city, by film, by city with free
seats, by host — with a random value. The EventService runs as its own process without Redis (every ListEvents
reaches Postgres) with a pool of ``POOL``; the baseline sends the statement the service builds for the same
request (``services.event.repository.build_list_sql``; checked at start against the SQL the service layer
actually sends) through an asyncpg pool of the same size, with the same number of requests in flight.

Plans: every shape is EXPLAINed on the loaded table; a sequential scan of event.events is a correctness failure.
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
GOAL = 0.5
SHAPES = ("upcoming", "city", "film", "city_free", "host")


@dataclass(frozen=True)
class Shape:
    kind: str
    city: str | None = None
    film: str | None = None
    host: str | None = None
    free: bool = False

    def request(self) -> service_pb2.ListEventsRequest:
        return service_pb2.ListEventsRequest(
            page_size=PAGE,
            city=self.city or "",
            film_id=self.film or "",
            host=f"users/{self.host}" if self.host else "",
            has_free_seats=self.free,
        )

    def query(self, now: datetime) -> events.ListQuery:
        return events.ListQuery(
            start_from=now,
            start_to=None,
            film_id=self.film,
            city=self.city,
            has_free_seats=self.free,
            host_id=self.host,
            own=False,
            text=None,
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


async def seed(pool: asyncpg.Pool, rng: random.Random) -> None:
    first = datetime.now(UTC) + timedelta(days=1)
    hosts = [f"b3-host-{n}" for n in range(HOSTS)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table(
            "users", schema_name="account", columns=["id", "display_name"], records=[(h, f"Host {h}") for h in hosts]
        )
        records = []
        for n in range(EVENTS):
            start = first + timedelta(minutes=5 * n)
            capacity = rng.randint(2, 12)
            records.append((
                uuid.uuid4(), rng.choice(hosts), f"tt{rng.randrange(FILMS):07d}", f"Film {n % FILMS}", f"Night {n}",
                start, start + timedelta(hours=2), "Europe/Berlin", "Living room", "Somestr. 1",
                f"City {rng.randrange(CITIES)}", capacity, capacity if rng.random() < 0.2 else rng.randint(0, capacity),
                "PUBLIC" if rng.random() < 0.9 else "PRIVATE", "t" * 32,
            ))  # fmt: skip
        await conn.copy_records_to_table(
            "events",
            schema_name="event",
            columns=[
                "id", "host_id", "film_id", "film_title", "title", "start_time", "end_time", "time_zone",
                "place_name", "place_address", "place_city", "capacity", "seats_taken", "visibility", "invite_token",
            ],
            records=records,
        )  # fmt: skip
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
                sorted({index for _, relation, index in nodes if relation == "events" and index})
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


async def run(ctx: BenchContext) -> list[Row]:
    seconds = ctx.seconds(8.0, 0.6)
    rounds = 1 if ctx.quick else 3
    concurrency = 8 if ctx.quick else CONCURRENCY
    rng = random.Random(3)
    samples = shapes(rng, 5000)
    async with ctx.pool(POOL) as pool:
        started = time.perf_counter()
        await seed(pool, rng)
        ctx.log(f"  {ID} seeded {EVENTS:,} events in {time.perf_counter() - started:.1f} s")
        seq_scans, used = await plans(pool, samples)
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
        )
    ]
