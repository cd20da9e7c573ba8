"""B1 — per-RPC overhead: a trivial RPC through cowatch's full server stack vs the same RPC on a bare grpc.aio server.

Both sides are processes of their own started from this module (``python -m tests.bench.scenarios.b1_interceptors``):

- **cowatch**: ``services.common.server.run`` with production settings (INFO JSON logs on stdout, Prometheus
  metrics, load shedding, request ids, deadline, text rule, error mapping) and an app whose only method is an
  anonymous ``/cowatch.bench.v1.Echo/Echo`` returning its bytes — every byte of per-RPC cost the service
  processes pay before their own handler runs;
- **bare**: ``grpc.aio.server()`` with the same echo method, no interceptor (plus the health service so the
  harness can wait for it), on the same (default asyncio) event loop.

Driven the same way (4 HTTP/2 connections, ``CONCURRENCY`` calls in flight, a GetEvent-sized payload). Throughput:
closed loop, rounds alternating bare / cowatch (median per side). Latency: open loop at 50 % of the cowatch
capacity on both sides. An authenticated echo (bearer token verified per call) is measured too, for the notes.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from tests.bench.echo import ECHO_METHOD, ECHO_SERVICE, echo_handler
from tests.bench.harness import BenchContext, LoadResult, Row, channels, closed_loop, fmt_ms, fmt_rate, open_loop

ID = "B1"
CONCURRENCY = 32
GOAL = 0.8
PAYLOAD = b"\n(events/7d9f0c1e-3c5e-4a55-9a43-2f9a8f4f2a11" + b"\x12\x00"
BARE_ENV = "COWATCH_BENCH_BARE"


class EchoApp:
    """The smallest cowatch app: one anonymous echo method, no database."""

    name = "bench-echo"
    service_names: Sequence[str] = (ECHO_SERVICE,)
    anonymous_methods = frozenset({ECHO_METHOD})

    def register(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers([echo_handler()])

    async def start(self) -> None:
        return None

    async def ready(self) -> bool:
        return True

    async def stop(self) -> None:
        return None


async def _serve_bare(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([echo_handler()])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    if os.environ.get(BARE_ENV):
        asyncio.run(_serve_bare(int(os.environ["COWATCH_GRPC_PORT"])))
        return
    from services.common.server import run
    from services.common.settings import CommonSettings

    run(lambda settings: EchoApp(), CommonSettings)


async def run(ctx: BenchContext) -> list[Row]:
    seconds = ctx.seconds(4.0, 0.5)
    rounds = 1 if ctx.quick else 3
    concurrency = 8 if ctx.quick else CONCURRENCY
    module = "tests.bench.scenarios.b1_interceptors"
    # (the bare side ignores every COWATCH_* setting but the port; health reports SERVING from the start)
    async with (
        ctx.service(module, max_concurrent_rpcs=4096, metrics_port=0) as full,
        ctx.service(module, bench_bare=1) as bare,
    ):
        full_chans, bare_chans = channels(full.address, 4), channels(bare.address, 4)
        full_echo: list[Any] = [c.unary_unary(ECHO_METHOD) for c in full_chans]
        bare_echo: list[Any] = [c.unary_unary(ECHO_METHOD) for c in bare_chans]
        auth = ctx.metadata("b1-user")

        async def via_full(i: int) -> None:
            await full_echo[i % 4](PAYLOAD, timeout=10)

        async def via_full_auth(i: int) -> None:
            await full_echo[i % 4](PAYLOAD, timeout=10, metadata=auth)

        async def via_bare(i: int) -> None:
            await bare_echo[i % 4](PAYLOAD, timeout=10)

        async def measure(kind: str, runner: Callable[[], Any]) -> LoadResult:
            result: LoadResult = await runner()
            ctx.log(
                f"  {ID} {kind}: {result.stats.rate:,.0f}/s p50 {result.stats.p50_ms:.2f} ms "
                f"p99 {result.stats.p99_ms:.2f} ms errors {result.errors or 0}"
            )
            return result

        def closed(op: Callable[[int], Any]) -> Callable[[], Any]:
            return functools.partial(closed_loop, op, concurrency=concurrency, seconds=seconds)

        for op in (via_bare, via_full, via_full_auth):  # warm-up: connections, handler caches
            await closed_loop(op, concurrency=concurrency, seconds=ctx.seconds(0.5, 0.2))
        runs: dict[str, list[LoadResult]] = {"bare": [], "full": [], "auth": []}
        for n in range(rounds):
            runs["bare"].append(await measure("bare closed", closed(via_bare)))
            runs["full"].append(await measure("cowatch closed", closed(via_full)))
            if n == 0:  # (for the notes only: one round)
                runs["auth"].append(await measure("cowatch+auth closed", closed(via_full_auth)))
        rate = {k: statistics.median(r.stats.rate for r in v) for k, v in runs.items()}
        offered = 0.5 * rate["full"]
        bare_open = await measure("bare open", lambda: open_loop(via_bare, rate=offered, seconds=seconds))
        full_open = await measure("cowatch open", lambda: open_loop(via_full, rate=offered, seconds=seconds))
        for channel in (*full_chans, *bare_chans):
            await channel.close()

    errors = sum(sum(r.errors.values()) for v in runs.values() for r in v) + sum(
        sum(r.errors.values()) for r in (bare_open, full_open)
    )
    ratio = rate["full"] / rate["bare"] if rate["bare"] else None
    met = ratio is not None and ratio >= GOAL
    verdict = "" if met else f"MISSED: ratio {ratio or 0:.2f} < {GOAL}. "
    per_rpc_us = (1 / rate["full"] - 1 / rate["bare"]) * 1e6 if rate["full"] and rate["bare"] else 0.0
    notes = (
        f"{verdict}anonymous echo through the full chain (request id, metrics, shedding, deadline, auth check, text "
        f"rule, errors, one INFO log line) vs bare grpc.aio (asyncio loop on both); ≈ {per_rpc_us:,.0f} µs of "
        f"server time added per RPC (closed-loop estimate); authenticated echo (HS256 bearer verified) "
        f"{fmt_rate(rate['auth'], 'rps')}; open loop at {offered:,.0f}/s: cowatch p50 "
        f"{fmt_ms(full_open.stats.p50_ms)} p99 {fmt_ms(full_open.stats.p99_ms)}, bare p99 "
        f"{fmt_ms(bare_open.stats.p99_ms)}; {concurrency} in flight on 4 connections, median of {rounds} "
        f"alternating {seconds:g} s rounds; errors {errors}; load average {os.getloadavg()[0]:.1f}"
    )
    return [
        Row(
            id=ID,
            scenario="full interceptor chain vs bare grpc.aio echo",
            cowatch=fmt_rate(rate["full"], "echo/s"),
            baseline=fmt_rate(rate["bare"], "echo/s") + " (bare grpc.aio)",
            ratio=ratio,
            goal=f"≥ {GOAL}",
            met=met,
            notes=notes,
            correctness={"errors": errors},
            data={
                "rates": rate,
                "open": {"bare": vars(bare_open.stats), "full": vars(full_open.stats)},
                "concurrency": concurrency,
                "seconds": seconds,
                "rounds": rounds,
                "started": time.time(),
            },
        )
    ]


if __name__ == "__main__":
    main()
