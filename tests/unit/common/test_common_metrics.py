"""Prometheus metrics: RPCs by method, code and latency; pool gauges; the /metrics endpoint on its port."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from services.common.auth import TokenVerifier
from services.common.breaker import BreakerState
from services.common.errors import NotFound
from services.common.metrics import ServerMetrics
from services.common.server import start_server
from services.common.settings import CommonSettings
from services.dev.processes import free_port
from tests.unit.common.keys import AUDIENCE, HS_SECRET, ISSUER

SERVICE = "cowatch.test.v1.Metered"


class FakePool:
    def get_size(self) -> int:
        return 7

    def get_idle_size(self) -> int:
        return 3

    def get_max_size(self) -> int:
        return 10


class MeteredApp:
    name = "metered"
    service_names: Sequence[str] = (SERVICE,)
    anonymous_methods = frozenset({f"/{SERVICE}/Ok", f"/{SERVICE}/Missing"})

    def __init__(self) -> None:
        self.metrics: ServerMetrics | None = None

    def bind_metrics(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def register(self, server: grpc.aio.Server) -> None:
        async def ok(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return b"ok"

        async def missing(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            raise NotFound("THING_NOT_FOUND", "no such thing")

        handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
            "Ok": grpc.unary_unary_rpc_method_handler(ok),
            "Missing": grpc.unary_unary_rpc_method_handler(missing),
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])

    async def start(self) -> None:
        assert self.metrics is not None  # bound before start
        self.metrics.track_pool(self.name, FakePool())
        self.metrics.breaker_changed("redis", BreakerState.OPEN)

    async def ready(self) -> bool:
        return True

    async def stop(self) -> None:
        return None


def identity(data: bytes) -> bytes:
    return data


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


async def test_rpc_pool_and_breaker_metrics_are_served_on_the_metrics_port():
    port = free_port()
    settings = CommonSettings(
        database_url="postgresql://unused@127.0.0.1/none",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_hs256_secret=HS_SECRET,
        grpc_host="127.0.0.1",
        metrics_port=port,
        metrics_host="127.0.0.1",
    )
    app = MeteredApp()
    running = await start_server(app, settings, verifier=TokenVerifier.from_settings(settings), port=0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            ok = channel.unary_unary(f"/{SERVICE}/Ok", identity, identity)
            missing = channel.unary_unary(f"/{SERVICE}/Missing", identity, identity)
            for _ in range(3):
                await ok(b"", timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await missing(b"", timeout=5)
            assert info.value.code() is grpc.StatusCode.NOT_FOUND
        text = await asyncio.to_thread(scrape, port)
        labels = f'grpc_method="Ok",grpc_service="{SERVICE}"'
        assert f'grpc_server_handled_total{{grpc_code="OK",{labels}}} 3.0' in text
        assert (
            f'grpc_server_handled_total{{grpc_code="NOT_FOUND",grpc_method="Missing",grpc_service="{SERVICE}"}} 1.0'
            in text
        )
        assert f"grpc_server_handling_seconds_count{{{labels}}} 3.0" in text
        assert 'cowatch_db_pool_connections{pool="metered",state="in_use"} 4.0' in text
        assert 'cowatch_db_pool_connections{pool="metered",state="idle"} 3.0' in text
        assert 'cowatch_db_pool_max_connections{pool="metered"} 10.0' in text
        assert 'cowatch_circuit_breaker_state{breaker="redis"} 1.0' in text
        assert "cowatch_rpc_in_flight 0.0" in text
    finally:
        await running.stop(grace=1)
    # the endpoint goes away with the server
    try:
        await asyncio.to_thread(scrape, port)
    except OSError:
        pass
    else:
        raise AssertionError("/metrics still served after stop")


def test_value_sums_over_unspecified_labels():
    metrics = ServerMetrics()
    metrics.cache_result("event", "hit")
    metrics.cache_result("event", "hit")
    metrics.cache_result("event", "miss")
    metrics.cache_result("event_list", "bypass")
    metrics.cache_load("event", coalesced=False)
    metrics.cache_load("event", coalesced=True)
    assert metrics.value("cowatch_cache_requests_total", {"cache": "event", "result": "hit"}) == 2
    assert metrics.value("cowatch_cache_requests_total", {"cache": "event"}) == 3
    assert metrics.value("cowatch_cache_requests_total") == 4
    assert metrics.value("cowatch_cache_loads_total") == 1
    assert metrics.value("cowatch_cache_coalesced_total") == 1
    assert metrics.value("nothing_like_this") == 0
    rendered: Any = metrics.render()
    assert 'cowatch_cache_requests_total{cache="event",result="hit"} 2.0' in rendered
