"""Redis down or slow (README, "Degradation"): every RPC still answers from Postgres, no request waits
longer than the Redis timeout, the breaker opens and closes again by itself, and no write is hidden by a stale entry
afterwards.

Each test starts its own redis-server (never the shared one) and breaks it: SIGKILL, or SIGSTOP (a hung Redis:
connections stay open, nothing answers).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
import redis.asyncio
from cowatch.event.v1 import resources_pb2, service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from google.protobuf import field_mask_pb2

from services.common.breaker import BreakerState
from services.common.cache import Codec, RedisCache
from services.common.clock import ManualClock
from services.common.server import RunningServer
from services.event.app import EventApp
from tests.support.api import Caller, new_caller
from tests.support.factories import create_request
from tests.support.redis_server import RedisServer
from tests.support.servers import SERVING, event_server, health, wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

REDIS_TIMEOUT = 0.2
WORKERS = 12


def cache_of(running: RunningServer) -> RedisCache:
    app = running.app
    assert isinstance(app, EventApp) and isinstance(app.cache, RedisCache)
    return app.cache


@dataclass
class Load:
    """A mixed read/write load on the EventService; every call and its latency is recorded."""

    events: event_grpc.EventServiceAsyncStub
    host: Caller
    names: list[str]
    city: str
    latencies: list[tuple[float, float, str]] = field(default_factory=list)  # (start, seconds, kind)
    errors: list[str] = field(default_factory=list)
    titles: dict[str, str] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, n: int) -> None:
        reader = new_caller()
        i = 0
        while not self.stop.is_set():
            i += 1
            name = self.names[(n + i) % len(self.names)]
            kind = ("get", "get_auth", "list", "update")[i % 4] if n == 0 else ("get", "get_auth", "list")[i % 3]
            started = time.perf_counter()
            try:
                if kind == "get":
                    await self.events.GetEvent(service_pb2.GetEventRequest(name=name), timeout=5)
                elif kind == "get_auth":
                    await self.events.GetEvent(
                        service_pb2.GetEventRequest(name=name), metadata=reader.metadata, timeout=5
                    )
                elif kind == "list":
                    await self.events.ListEvents(service_pb2.ListEventsRequest(city=self.city), timeout=5)
                else:
                    title = f"title {uuid.uuid4().hex[:6]}"
                    request = service_pb2.UpdateEventRequest(
                        event=resources_pb2.Event(name=name, title=title),
                        update_mask=field_mask_pb2.FieldMask(paths=["title"]),
                    )
                    await self.events.UpdateEvent(request, metadata=self.host.metadata, timeout=5)
                    self.titles[name] = title
            except grpc.aio.AioRpcError as exc:
                self.errors.append(f"{kind}: {exc.code().name} {exc.details()}")
            self.latencies.append((started, time.perf_counter() - started, kind))

    def slowest(self, since: float = 0.0) -> float:
        return max((s for t, s, _ in self.latencies if t >= since), default=0.0)


async def seeded(events: event_grpc.EventServiceAsyncStub, clock: ManualClock, count: int = 6) -> Load:
    host = new_caller()
    city = f"Redisfail-{uuid.uuid4().hex[:8]}"
    names = []
    for d in range(count):
        created = await events.CreateEvent(
            create_request(clock.now(), city=city, start_in=timedelta(days=1 + d)), metadata=host.metadata
        )
        names.append(created.name)
    return Load(events, host, names, city)


async def latest_titles_are_served(load: Load, db_pool: asyncpg.Pool) -> None:
    """Every event reads back as Postgres has it (no stale entry survived)."""
    rows = await db_pool.fetch(
        "SELECT id::text, title FROM event.events WHERE id = ANY($1::uuid[])", [n.split("/")[1] for n in load.names]
    )
    want = {f"events/{r['id']}": r["title"] for r in rows}
    for name in load.names:
        for metadata in ((), load.host.metadata):
            got = await load.events.GetEvent(service_pb2.GetEventRequest(name=name), metadata=metadata, timeout=5)
            assert got.title == want[name], f"{name}: stale {got.title!r}, Postgres has {want[name]!r}"
    page = await load.events.ListEvents(service_pb2.ListEventsRequest(city=load.city), timeout=5)
    assert {e.name: e.title for e in page.events} == want


async def watch_breaker(cache: RedisCache, seen: list[BreakerState], stop: asyncio.Event) -> None:
    while not stop.is_set():
        if not seen or seen[-1] is not cache.breaker.state:
            seen.append(cache.breaker.state)
        await asyncio.sleep(0.005)


async def run_with_fault(load: Load, cache: RedisCache, fault: Callable[[], object], heal: Callable[[], object]):
    """1 s healthy, fault for 2 s, heal, until the breaker has closed and 1 s more."""
    seen: list[BreakerState] = []
    watcher = asyncio.create_task(watch_breaker(cache, seen, load.stop))
    workers = [asyncio.create_task(load.worker(n)) for n in range(WORKERS)]
    await asyncio.sleep(1.0)
    fault()  # in this thread: starting a server forks with a preexec_fn, which is only safe from the main thread
    broke = time.perf_counter()
    await asyncio.sleep(2.0)
    heal()
    healed = time.perf_counter()
    recovered = await wait_until(lambda: cache.breaker.closed, within=10)
    await asyncio.sleep(1.0)
    load.stop.set()
    await asyncio.gather(*workers, watcher)
    return seen, broke, healed, recovered


async def test_redis_killed_under_load_then_back(
    redis_factory: Callable[..., RedisServer], database_url: str, db_pool: asyncpg.Pool
):
    redis = redis_factory()
    clock = ManualClock(datetime.now(UTC))
    async with event_server(
        database_url,
        clock=clock,
        redis_url=redis.url,
        redis_timeout_seconds=REDIS_TIMEOUT,
        redis_breaker_reset_seconds=0.3,
    ) as (running, events):
        cache = cache_of(running)
        load = await seeded(events, clock)
        seen, broke, _healed, recovered = await run_with_fault(load, cache, redis.kill, redis.start)

        assert load.errors == []
        assert len(load.latencies) > 300
        assert BreakerState.OPEN in seen and seen[-1] is BreakerState.CLOSED
        assert recovered < 3.0  # closed again by itself
        # a refused connection is instant, so nobody waited even the Redis timeout
        assert load.slowest(since=broke) < REDIS_TIMEOUT + 0.8
        assert await health(running.port) == SERVING  # Redis is not a readiness dependency
        await latest_titles_are_served(load, db_pool)

        # and the cache is in use again (the restarted Redis came back empty)
        await cache.settle()
        hits = running.metrics.value("cowatch_cache_requests_total", {"result": "hit"})
        await events.GetEvent(service_pb2.GetEventRequest(name=load.names[0]), timeout=5)
        await cache.settle()
        await events.GetEvent(service_pb2.GetEventRequest(name=load.names[0]), timeout=5)
        assert running.metrics.value("cowatch_cache_requests_total", {"result": "hit"}) > hits
        assert running.metrics.value("cowatch_circuit_breaker_state", {"breaker": "redis"}) == 0
        assert running.metrics.value("cowatch_cache_requests_total", {"result": "bypass"}) > 0


async def test_redis_hung_under_load_nobody_waits_past_the_timeout_and_no_write_is_hidden(
    redis_factory: Callable[..., RedisServer], database_url: str, db_pool: asyncpg.Pool
):
    """SIGSTOP keeps every cached entry in Redis while writes happen: the invalidations that could not reach it
    are replayed before the breaker closes, so none of those entries is ever served."""
    redis = redis_factory()
    clock = ManualClock(datetime.now(UTC))
    async with event_server(
        database_url,
        clock=clock,
        redis_url=redis.url,
        redis_timeout_seconds=REDIS_TIMEOUT,
        redis_breaker_reset_seconds=0.3,
    ) as (running, events):
        cache = cache_of(running)
        load = await seeded(events, clock)
        seen, broke, healed, _recovered = await run_with_fault(load, cache, redis.pause, redis.resume)

        assert load.errors == []
        assert BreakerState.OPEN in seen and seen[-1] is BreakerState.CLOSED
        during = [s for t, s, _ in load.latencies if broke <= t < healed]
        assert len(during) > 100
        # Each request waits on Redis at most once, for at most the timeout (plus its own Postgres work); without
        # the timeout they would have hung for the whole 2 s pause.
        assert max(during) < REDIS_TIMEOUT + 0.8
        # and only the calls already waiting when it hung paid even that: the breaker then answered at once
        timed_out = running.metrics.value("cowatch_cache_errors_total", {"operation": "get"})
        assert 0 < timed_out <= 2 * WORKERS
        assert any(k == "update" for t, _, k in load.latencies if broke <= t < healed)  # writes happened meanwhile
        await latest_titles_are_served(load, db_pool)


async def test_redis_down_at_start_then_up(redis_factory: Callable[..., RedisServer], database_url: str):
    redis = redis_factory()
    redis.stop()  # the port is known, nothing listens
    clock = ManualClock(datetime.now(UTC))
    async with event_server(
        database_url,
        clock=clock,
        redis_url=redis.url,
        redis_timeout_seconds=REDIS_TIMEOUT,
        redis_breaker_reset_seconds=0.2,
    ) as (running, events):
        cache = cache_of(running)
        load = await seeded(events, clock, count=1)
        assert await health(running.port) == SERVING
        for _ in range(10):
            await events.GetEvent(service_pb2.GetEventRequest(name=load.names[0]), timeout=5)
        assert not cache.breaker.closed
        redis.start()
        await wait_until(lambda: cache.breaker.closed, within=5)
        await events.GetEvent(service_pb2.GetEventRequest(name=load.names[0]), timeout=5)
        await cache.settle()
        hits = running.metrics.value("cowatch_cache_requests_total", {"result": "hit"})
        await events.GetEvent(service_pb2.GetEventRequest(name=load.names[0]), timeout=5)
        assert running.metrics.value("cowatch_cache_requests_total", {"result": "hit"}) == hits + 1


async def test_a_hold_redis_missed_the_end_of_is_removed_when_redis_answers_again(
    redis_factory: Callable[..., RedisServer],
):
    """A write held its cache scope before COMMIT; after COMMIT Redis was unavailable (the breaker open), so its
    invalidation was only remembered. Once Redis answers, the probe replays it and removes the hold: the scope is
    cached again at once, not only when the hold expires (30 s)."""
    server = redis_factory()
    client = redis.asyncio.Redis.from_url(server.url, socket_timeout=REDIS_TIMEOUT)
    cache = RedisCache(
        client, prefix="hold-test:", timeout=REDIS_TIMEOUT, breaker_threshold=1, breaker_reset_seconds=0.3
    )
    codec: Codec[int] = Codec("test", lambda v: v, lambda j: j)
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        return loads

    try:
        await cache.hold("k")
        server.pause()
        assert await cache.get_or_load("k", load, codec, ttl=30) == 1  # times out: the breaker opens
        assert cache.breaker.state is BreakerState.OPEN
        await cache.invalidate("k")  # not even tried: remembered, with the hold to remove
        server.resume()
        await wait_until(lambda: cache.breaker.closed, within=5)
        for expected in (2, 2):
            assert await cache.get_or_load("k", load, codec, ttl=30) == expected
            await cache.settle()
    finally:
        await cache.aclose()
