"""start_server: health follows app.ready(), and turns NOT_SERVING as soon as shutdown begins."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.auth import TokenVerifier
from services.common.server import App, start_server
from services.common.settings import CommonSettings
from tests.unit.common.keys import AUDIENCE, HS_SECRET, ISSUER

SERVICE = "cowatch.test.v1.Probe"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FakeApp:
    name = "probe"
    service_names: Sequence[str] = (SERVICE,)
    anonymous_methods = frozenset({f"/{SERVICE}/Ping"})

    def __init__(self) -> None:
        self.is_ready = False
        self.events: list[str] = []

    def register(self, server: grpc.aio.Server) -> None:
        async def ping(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return b"pong"

        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {"Ping": grpc.unary_unary_rpc_method_handler(ping)})]
        )

    async def start(self) -> None:
        self.events.append("start")

    async def ready(self) -> bool:
        return self.is_ready

    async def stop(self) -> None:
        self.events.append("stop")


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> CommonSettings:
    return CommonSettings(
        database_url="postgresql://unused@127.0.0.1/none",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_hs256_secret=HS_SECRET,
        grpc_host="127.0.0.1",
    )


def identity(data: bytes) -> bytes:
    return data


async def health_status(stub: Any, service: str = "") -> int:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(reply.status)


async def wait_for_status(stub: Any, wanted: int, service: str = "") -> None:
    """Watch (a server-streaming RPC through the interceptor) until ``service`` reports ``wanted``."""
    async with asyncio.timeout(5):
        async for reply in stub.Watch(health_pb2.HealthCheckRequest(service=service)):
            if reply.status == wanted:
                return


async def test_health_follows_readiness_and_shutdown(settings: CommonSettings):
    app = FakeApp()
    _: App = app  # FakeApp satisfies the protocol (checked by mypy)
    verifier = TokenVerifier.from_settings(settings)
    running = await start_server(app, settings, verifier=verifier, port=0, readiness_interval=0.05)
    try:
        assert running.port > 0
        assert app.events == ["start"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # type: ignore[arg-type, unused-ignore]
            # not ready yet: NOT_SERVING overall and per service (the servicer's SERVING default is overridden)
            await asyncio.sleep(0.2)
            assert await health_status(stub) == NOT_SERVING
            assert await health_status(stub, SERVICE) == NOT_SERVING

            app.is_ready = True
            await wait_for_status(stub, SERVING)
            assert await health_status(stub, SERVICE) == SERVING
            assert await channel.unary_unary(f"/{SERVICE}/Ping", identity, identity)(b"") == b"pong"

            app.is_ready = False  # e.g. Postgres went down
            await wait_for_status(stub, NOT_SERVING, SERVICE)
            app.is_ready = True  # ...and came back
            await wait_for_status(stub, SERVING, SERVICE)

            await running.begin_shutdown()
            assert await health_status(stub) == NOT_SERVING
            assert await health_status(stub, SERVICE) == NOT_SERVING
            await asyncio.sleep(0.2)  # the readiness loop must not flip it back
            assert await health_status(stub) == NOT_SERVING
    finally:
        await running.stop(grace=1)
    assert app.events == ["start", "stop"]


async def test_in_flight_rpc_finishes_during_graceful_stop(settings: CommonSettings):
    started = asyncio.Event()

    class SlowApp(FakeApp):
        def register(self, server: grpc.aio.Server) -> None:
            async def slow(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
                started.set()
                await asyncio.sleep(0.3)
                return b"done"

            server.add_generic_rpc_handlers(
                [grpc.method_handlers_generic_handler(SERVICE, {"Ping": grpc.unary_unary_rpc_method_handler(slow)})]
            )

    app = SlowApp()
    app.is_ready = True
    running = await start_server(app, settings, verifier=TokenVerifier.from_settings(settings), port=0)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/Ping", identity, identity)(b"")
        await started.wait()
        await running.stop(grace=5)
        assert await call == b"done"
    assert app.events == ["start", "stop"]


async def test_reflection_lists_the_services(settings: CommonSettings):
    app = FakeApp()
    running = await start_server(app, settings, verifier=TokenVerifier.from_settings(settings), port=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
            names = {s.name for s in responses[0].list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    finally:
        await running.stop(grace=0)
