"""Load shedding and deadlines in the server stack (loopback gRPC, no database).

Beyond ``max_concurrent_rpcs`` in flight, an RPC is refused at once with RESOURCE_EXHAUSTED / SERVER_OVERLOADED,
health checks keep answering, and the refusals are in the metrics. A passed client deadline cancels the handler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import deadline
from services.common.auth import TokenVerifier
from services.common.grpc_errors import parse_error_details
from services.common.server import start_server
from services.common.settings import CommonSettings
from tests.unit.common.keys import AUDIENCE, HS_SECRET, ISSUER

SERVICE = "cowatch.test.v1.Slow"


class SlowApp:
    name = "slow"
    service_names: Sequence[str] = (SERVICE,)
    anonymous_methods = frozenset({f"/{SERVICE}/Wait"})

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.all_entered = asyncio.Event()
        self.expected = 0
        self.cancelled = 0
        self.was_cancelled = asyncio.Event()
        self.remaining: list[float | None] = []

    def register(self, server: grpc.aio.Server) -> None:
        async def wait(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            self.entered += 1
            if self.entered == self.expected:
                self.all_entered.set()
            self.remaining.append(deadline.remaining())
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                self.was_cancelled.set()
                raise
            return b"done"

        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {"Wait": grpc.unary_unary_rpc_method_handler(wait)})]
        )

    async def start(self) -> None:
        return None

    async def ready(self) -> bool:
        return True

    async def stop(self) -> None:
        return None


def settings(**overrides: Any) -> CommonSettings:
    return CommonSettings(
        database_url="postgresql://unused@127.0.0.1/none",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_hs256_secret=HS_SECRET,
        grpc_host="127.0.0.1",
        **overrides,
    )


def identity(data: bytes) -> bytes:
    return data


async def test_excess_rpcs_are_refused_fast_with_resource_exhausted_and_health_still_answers():
    app = SlowApp()
    app.expected = 8
    s = settings(max_concurrent_rpcs=8)
    running = await start_server(app, s, verifier=TokenVerifier.from_settings(s), port=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            call = channel.unary_unary(f"/{SERVICE}/Wait", identity, identity)
            admitted = [asyncio.ensure_future(call(b"", timeout=10)) for _ in range(8)]
            async with asyncio.timeout(5):
                await app.all_entered.wait()

            async def refused() -> tuple[float, grpc.aio.AioRpcError]:
                started = time.perf_counter()
                try:
                    await call(b"", timeout=10)
                except grpc.aio.AioRpcError as exc:
                    return time.perf_counter() - started, exc
                raise AssertionError("an RPC beyond the limit was admitted")

            results = await asyncio.gather(*(refused() for _ in range(100)))
            assert {exc.code() for _, exc in results} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            details = parse_error_details(results[0][1].trailing_metadata())
            assert details is not None and details.reason == "SERVER_OVERLOADED"
            assert max(seconds for seconds, _ in results) < 1.0  # refused, not queued until the deadline

            health: Any = health_pb2_grpc.HealthStub(channel)  # type: ignore[arg-type, unused-ignore]
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

            assert running.metrics.value("cowatch_rpc_in_flight") == 8
            app.release.set()
            assert await asyncio.gather(*admitted) == [b"done"] * 8
            assert app.entered == 8
            refused_count = running.metrics.value(
                "grpc_server_handled_total", {"grpc_method": "Wait", "grpc_code": "RESOURCE_EXHAUSTED"}
            )
            assert refused_count == 100
            assert running.metrics.value("cowatch_rpc_in_flight") == 0
            # capacity is back
            assert await call(b"", timeout=5) == b"done"
    finally:
        await running.stop(grace=1)


async def test_a_passed_deadline_cancels_the_handler_and_frees_its_slot():
    app = SlowApp()
    s = settings(max_concurrent_rpcs=1)
    running = await start_server(app, s, verifier=TokenVerifier.from_settings(s), port=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            call = channel.unary_unary(f"/{SERVICE}/Wait", identity, identity)
            started = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"", timeout=0.3)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert time.perf_counter() - started < 1.0
            async with asyncio.timeout(2):
                await app.was_cancelled.wait()
            # the handler saw the deadline (for pool waits), and its slot is free again
            assert app.remaining[0] is not None and 0 < app.remaining[0] <= 0.35
            app.release.set()
            assert await call(b"", timeout=5) == b"done"
    finally:
        await running.stop(grace=1)


async def test_deadline_bounds_waits():
    assert deadline.remaining() is None
    assert deadline.bounded(2.0) == 2.0
    token = deadline.set_from_time_remaining(0.5)
    try:
        assert 0.4 < (deadline.remaining() or 0) <= 0.5
        assert deadline.bounded(2.0) <= 0.5 - deadline.MARGIN_SECONDS + 1e-6
        assert deadline.bounded(0.1) == 0.1
    finally:
        deadline.reset(token)
    token = deadline.set_from_time_remaining(0.01)
    try:
        assert deadline.bounded(2.0) == 0.0  # already inside the margin
    finally:
        deadline.reset(token)
