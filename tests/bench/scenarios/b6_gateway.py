"""B6 — the gateway's cost: GetEvent through NGINX → Envoy (the production path, native gRPC on NGINX's h2c port)
vs the same call straight to the EventService process, same concurrency, same run, rounds alternating.

One EventService process (production settings, no Redis: every call reads PostgreSQL), Envoy rendered from
envoy/envoy.yaml and NGINX from nginx/nginx.conf with the per-client rate and connection limits raised out of the
way (one client address here; over HTTP/2 each stream counts against ``limit_conn``, so a latency spike in the open
loop put more than the default 100 calls in flight and NGINX answered 429 → ``RESOURCE_EXHAUSTED``). Both sides
use 4 HTTP/2 connections and ``CONCURRENCY`` calls in flight, anonymous callers.
Ratio = gateway throughput ÷ direct throughput (median of the rounds); p50/p99 of both in the notes, plus open-loop
latency at 50 % of the gateway's capacity. On this 2-core box the gateway processes compete with the service and
the load generator for the same cores, so the ratio is a lower bound of what separate machines would show.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cowatch.event.v1 import service_pb2, service_pb2_grpc

from tests.bench.harness import (
    BenchContext,
    LoadResult,
    Op,
    Row,
    channels,
    closed_loop,
    fmt_ms,
    fmt_rate,
    need_tool,
    open_loop,
)
from tests.support.envoy import EnvoyProcess
from tests.support.factories import create_request
from tests.support.nginx import NginxProcess

ID = "B6"
CONCURRENCY = 32
GOAL = 0.85  # "keep ≥ 0.85": the gateway may cost at most 15 % of a direct call
EVENTS = 50
NO_LIMIT = {"COWATCH_NGINX_RATE": "100000r/s", "COWATCH_NGINX_BURST": "100000", "COWATCH_NGINX_MAX_CONNS": "10000"}


async def run(ctx: BenchContext) -> list[Row]:
    need_tool("nginx", "B6 (the gateway path is NGINX → Envoy)")
    seconds = ctx.seconds(5.0, 0.5)
    rounds = 1 if ctx.quick else 3
    concurrency = 8 if ctx.quick else CONCURRENCY
    with tempfile.TemporaryDirectory(prefix="cowatch-b6-") as tmp:
        workdir = Path(tmp)
        async with ctx.service("services.event", max_concurrent_rpcs=4096, log_level="WARNING") as svc:
            envoy = EnvoyProcess({"event": [("127.0.0.1", svc.port)]}, workdir)
            (workdir / "nginx").mkdir()
            nginx = NginxProcess(("127.0.0.1", envoy.port), workdir / "nginx", NO_LIMIT)
            try:
                await asyncio.to_thread(envoy.start)
                await asyncio.to_thread(envoy.wait_healthy, {"event": 1})
                await asyncio.to_thread(nginx.start)
                return await _measure(ctx, svc.address, nginx.grpc_target, seconds, rounds, concurrency)
            finally:
                await asyncio.to_thread(nginx.stop, 5)
                await asyncio.to_thread(envoy.stop, 5)


async def _measure(
    ctx: BenchContext, direct_target: str, gateway_target: str, seconds: float, rounds: int, concurrency: int
) -> list[Row]:
    direct_channels, gateway_channels = channels(direct_target, 4), channels(gateway_target, 4)
    try:
        direct = [service_pb2_grpc.EventServiceStub(c) for c in direct_channels]
        gateway = [service_pb2_grpc.EventServiceStub(c) for c in gateway_channels]
        host = ctx.metadata(f"b6-host-{uuid.uuid4().hex[:8]}", "Bench Host")
        now, city = datetime.now(UTC), f"B6-{uuid.uuid4().hex[:6]}"
        names = [
            (
                await direct[0].CreateEvent(
                    create_request(now, city=city, start_in=timedelta(days=2, hours=n)), metadata=host, timeout=10
                )
            ).name
            for n in range(EVENTS)
        ]
        gets = [service_pb2.GetEventRequest(name=n) for n in names]

        def op(stubs: list[service_pb2_grpc.EventServiceAsyncStub]) -> Op:
            async def call(i: int) -> None:
                await stubs[i % len(stubs)].GetEvent(gets[i % EVENTS], timeout=10)

            return call

        sides = {"direct": op(direct), "gateway": op(gateway)}
        for side in sides.values():  # warm-up: connections, Envoy's and NGINX's upstream pools
            await closed_loop(side, concurrency=concurrency, seconds=ctx.seconds(1.0, 0.2))
        runs: dict[str, list[LoadResult]] = {"direct": [], "gateway": []}
        for _ in range(rounds):
            for kind, side in sides.items():
                result = await closed_loop(side, concurrency=concurrency, seconds=seconds)
                ctx.log(
                    f"  {ID} {kind}: {result.stats.rate:,.0f}/s p50 {result.stats.p50_ms:.2f} ms "
                    f"p99 {result.stats.p99_ms:.2f} ms errors {result.errors or 0}"
                )
                runs[kind].append(result)
        rate = {kind: statistics.median(r.stats.rate for r in results) for kind, results in runs.items()}
        closed = {kind: min(results, key=lambda r: abs(r.stats.rate - rate[kind])) for kind, results in runs.items()}
        offered = 0.5 * rate["gateway"]
        opened = {kind: await open_loop(side, rate=offered, seconds=seconds) for kind, side in sides.items()}
    finally:
        for channel in (*direct_channels, *gateway_channels):
            await channel.close()

    errors = sum(sum(r.errors.values()) for results in runs.values() for r in results)
    errors += sum(sum(r.errors.values()) for r in opened.values())
    ratio = rate["gateway"] / rate["direct"] if rate["direct"] else 0.0
    met = ratio >= GOAL
    notes = (
        f"{'' if met else f'MISSED: ratio {ratio:.2f} < {GOAL}. '}"
        f"GetEvent (PostgreSQL read, no cache) closed loop, {concurrency} in flight on 4 connections: "
        f"gateway p50 {fmt_ms(closed['gateway'].stats.p50_ms)} p99 {fmt_ms(closed['gateway'].stats.p99_ms)}, "
        f"direct p50 {fmt_ms(closed['direct'].stats.p50_ms)} p99 {fmt_ms(closed['direct'].stats.p99_ms)}; "
        f"open loop at {offered:,.0f}/s (50 % of gateway capacity): gateway p50 "
        f"{fmt_ms(opened['gateway'].stats.p50_ms)} p99 {fmt_ms(opened['gateway'].stats.p99_ms)}, direct p50 "
        f"{fmt_ms(opened['direct'].stats.p50_ms)} p99 {fmt_ms(opened['direct'].stats.p99_ms)}; "
        f"NGINX, Envoy, 1 service process and the client share {ctx.cpu_count} CPUs; "
        f"median of {rounds} rounds of {seconds:g} s; errors {errors}"
    )
    return [
        Row(
            id=ID,
            scenario="GetEvent through NGINX → Envoy vs direct to the service",
            cowatch=fmt_rate(rate["gateway"], "rps") + " via gateway",
            baseline=fmt_rate(rate["direct"], "rps") + " direct",
            ratio=ratio,
            goal=f"≥ {GOAL}",
            met=met,
            notes=notes,
            correctness={"errors": errors},
            data={
                "rates": rate,
                "closed": {k: vars(v.stats) for k, v in closed.items()},
                "open": {k: vars(v.stats) for k, v in opened.items()},
                "concurrency": concurrency,
                "seconds": seconds,
                "rounds": rounds,
                "started": time.time(),
            },
        )
    ]
