"""B2 — cached reads: GetEvent and the first page of ListEvents answered from Redis, vs a bare echo RPC served by
the same process and server stack (interceptor, auth check, logging, metrics).

The EventService runs as its own process with Redis (a private ``redis-server``, or ``REDIS_URL`` under a
run-specific key prefix) and production settings (INFO logs, pool 10); this module is also that process's entry
point (``python -m tests.bench.scenarios.b2_cached_reads``): the EventService app plus one extra anonymous method,
``/cowatch.bench.v1.Echo/Echo``, which returns its bytes. Both sides are driven the same way (4 HTTP/2
connections, ``CONCURRENCY`` calls in flight, anonymous callers, as a public event page is read).

Throughput: closed loop, rounds alternating echo / GetEvent / ListEvents (median per side). Latency: open loop at
50 % of the cached GetEvent capacity. The hit ratio comes from the server's own /metrics endpoint.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import statistics
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from cowatch.event.v1 import service_pb2, service_pb2_grpc

from services.common.server import run as run_server
from services.dev.processes import free_port
from services.event.app import EventApp, EventSettings
from tests.bench.echo import ECHO_METHOD, echo_handler
from tests.bench.harness import (
    BenchContext,
    LoadResult,
    Row,
    channels,
    closed_loop,
    fmt_ms,
    fmt_rate,
    need_tool,
    open_loop,
)
from tests.support.factories import create_request
from tests.support.redis_server import RedisServer

ID = "B2"
CONCURRENCY = 32
EVENTS = 200
PAGE_SIZE = 10
GOAL = 0.85
LIST_GOAL = 0.6
P99_GOAL_MS = 5.0


# ---------------------------------------------------------------------------------------------- the server


class EchoEventApp(EventApp):
    """The EventService process plus a bare echo method on the same server."""

    @property
    def anonymous_methods(self) -> frozenset[str]:
        return super().anonymous_methods | {ECHO_METHOD}

    def register(self, server: grpc.aio.Server) -> None:
        super().register(server)
        server.add_generic_rpc_handlers([echo_handler()])


# ---------------------------------------------------------------------------------------------- helpers


@asynccontextmanager
async def redis_for_bench() -> AsyncIterator[tuple[str, str]]:
    """(url, key prefix): REDIS_URL's server under a fresh prefix, else a private redis-server."""
    prefix = f"cowatch-bench:{uuid.uuid4().hex[:8]}:"
    url = os.environ.get("REDIS_URL")
    if url:
        yield url, prefix
        return
    need_tool("redis-server", "B2 without REDIS_URL")
    # no preexec_fn: this process may already have busy gRPC threads (see tests/support/redis_server.py)
    server = RedisServer(die_with_parent=False)
    await asyncio.to_thread(server.start)
    try:
        yield server.url, prefix
    finally:
        await asyncio.to_thread(server.close)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r'^cowatch_cache_requests_total\{cache="(\w+)",result="(\w+)"\} ([0-9.e+]+)$', line)
        if match:
            out[f"{match.group(1)}:{match.group(2)}"] = float(match.group(3))
    return out


def hit_ratio(before: dict[str, float], after: dict[str, float], cache: str) -> float:
    def delta(result: str) -> float:
        key = f"{cache}:{result}"
        return after.get(key, 0.0) - before.get(key, 0.0)

    total = delta("hit") + delta("miss") + delta("bypass")
    return delta("hit") / total if total else 0.0


async def seed(stub: Any, ctx: BenchContext, city: str) -> list[str]:
    host = ctx.metadata(f"b2-host-{uuid.uuid4().hex[:8]}", "Bench Host")
    now = datetime.now(UTC)
    names = []
    for n in range(EVENTS):
        request = create_request(now, city=city, start_in=timedelta(days=2, hours=3 * n), title=f"Solaris night {n}")
        names.append((await stub.CreateEvent(request, metadata=host, timeout=10)).name)
    return names


# ---------------------------------------------------------------------------------------------- run


async def run(ctx: BenchContext) -> list[Row]:
    seconds = ctx.seconds(4.0, 0.5)
    rounds = 1 if ctx.quick else 3
    concurrency = 8 if ctx.quick else CONCURRENCY
    metrics_port = free_port()
    async with (
        redis_for_bench() as (redis_url, prefix),
        ctx.service(
            "tests.bench.scenarios.b2_cached_reads",
            redis_url=redis_url,
            redis_key_prefix=prefix,
            metrics_port=metrics_port,
            metrics_host="127.0.0.1",
            max_concurrent_rpcs=4096,
        ) as svc,
    ):
        chans = channels(svc.address, 4)
        stubs = [service_pb2_grpc.EventServiceStub(c) for c in chans]
        echoes: list[Any] = [c.unary_unary(ECHO_METHOD) for c in chans]
        city = f"Bench-{uuid.uuid4().hex[:6]}"
        names = await seed(stubs[0], ctx, city)
        gets = [service_pb2.GetEventRequest(name=n) for n in names]
        listing = service_pb2.ListEventsRequest(city=city, page_size=PAGE_SIZE)
        payload = gets[0].SerializeToString()  # an echo of the same size as a GetEvent request

        async def via_echo(i: int) -> None:
            await echoes[i % len(echoes)](payload, timeout=10)

        async def via_get(i: int) -> None:
            await stubs[i % len(stubs)].GetEvent(gets[i % EVENTS], timeout=10)

        async def via_list(i: int) -> None:
            await stubs[i % len(stubs)].ListEvents(listing, timeout=10)

        async def closed_rounds(op: Callable[[int], Any]) -> LoadResult:
            return await closed_loop(op, concurrency=concurrency, seconds=seconds)

        async def measure(kind: str, runner: Callable[[], Any]) -> LoadResult:
            result: LoadResult = await runner()
            ctx.log(
                f"  {ID} {kind}: {result.stats.rate:,.0f}/s p50 {result.stats.p50_ms:.2f} ms "
                f"p99 {result.stats.p99_ms:.2f} ms errors {result.errors or 0}"
            )
            return result

        # warm-up: channels, every event and the list page into the cache
        for op in (via_echo, via_get, via_list):
            await closed_loop(op, concurrency=concurrency, seconds=ctx.seconds(1.5, 0.3))
        before = await asyncio.to_thread(scrape, metrics_port)

        runs: dict[str, list[LoadResult]] = {"echo": [], "get": [], "list": []}
        for _ in range(rounds):
            for kind, op in (("echo", via_echo), ("get", via_get), ("list", via_list)):
                runs[kind].append(await measure(f"{kind} closed", functools.partial(closed_rounds, op)))
        rate = {kind: statistics.median(r.stats.rate for r in results) for kind, results in runs.items()}
        offered = 0.5 * rate["get"]
        open_runs = {
            "echo": await measure("echo open", lambda: open_loop(via_echo, rate=offered, seconds=seconds)),
            "get": await measure("get open", lambda: open_loop(via_get, rate=offered, seconds=seconds)),
            "list": await measure("list open", lambda: open_loop(via_list, rate=0.5 * rate["list"], seconds=seconds)),
        }
        after = await asyncio.to_thread(scrape, metrics_port)
        for channel in chans:
            await channel.close()

    errors = sum(sum(r.errors.values()) for results in runs.values() for r in results) + sum(
        sum(r.errors.values()) for r in open_runs.values()
    )
    get_ratio = rate["get"] / rate["echo"] if rate["echo"] else 0.0
    list_ratio = rate["list"] / rate["echo"] if rate["echo"] else 0.0
    p99 = open_runs["get"].stats.p99_ms
    hits_get, hits_list = hit_ratio(before, after, "event"), hit_ratio(before, after, "event_list")
    met = get_ratio >= GOAL and list_ratio >= LIST_GOAL and p99 <= P99_GOAL_MS
    verdict = ""
    if not met:
        missed = []
        if get_ratio < GOAL:
            missed.append(f"ratio {get_ratio:.2f} < {GOAL}")
        if list_ratio < LIST_GOAL:
            missed.append(f"ListEvents ratio {list_ratio:.2f} < {LIST_GOAL}")
        if p99 > P99_GOAL_MS:
            missed.append(f"p99 {p99:.1f} ms > {P99_GOAL_MS} ms")
        verdict = "MISSED: " + ", ".join(missed) + ". "
    notes = (
        f"{verdict}GetEvent (anonymous, cached) {fmt_rate(rate['get'], 'rps')} vs echo {fmt_rate(rate['echo'], 'rps')};"
        f" open loop at {offered:,.0f}/s (50 %): GetEvent p50 {fmt_ms(open_runs['get'].stats.p50_ms)} "
        f"p99 {fmt_ms(p99)}, echo p99 {fmt_ms(open_runs['echo'].stats.p99_ms)}; "
        f"ListEvents first page ({PAGE_SIZE} events, cached) {fmt_rate(rate['list'], 'rps')} "
        f"(ratio {list_ratio:.2f}, p99 {fmt_ms(open_runs['list'].stats.p99_ms)} at 50 %); "
        f"hit ratio (server metrics) GetEvent {hits_get:.1%}, ListEvents {hits_list:.1%}; "
        f"{concurrency} in flight on 4 connections, median of {rounds} rounds of {seconds:g} s; errors {errors}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    return [
        Row(
            id=ID,
            scenario="cached GetEvent / ListEvents vs bare echo, same server stack",
            cowatch=fmt_rate(rate["get"], "GetEvent/s"),
            baseline=fmt_rate(rate["echo"], "echo/s") + " (same process)",
            ratio=get_ratio,
            goal=f"≥ {GOAL} (ListEvents ≥ {LIST_GOAL}), p99 ≤ {P99_GOAL_MS:g} ms at 50 %",
            met=met,
            notes=notes,
            correctness={"errors": errors},
            data={
                "rates": rate,
                "list_ratio": list_ratio,
                "open": {k: vars(v.stats) for k, v in open_runs.items()},
                "hit_ratio": {"get": hits_get, "list": hits_list},
                "concurrency": concurrency,
                "seconds": seconds,
                "rounds": rounds,
                "started": time.time(),
            },
        )
    ]


if __name__ == "__main__":
    run_server(EchoEventApp, EventSettings)
