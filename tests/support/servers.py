"""In-process service servers with settings of a test's choosing (own Redis, own PostgreSQL, small limits), for
cache and fault tests; and small helpers to watch them (health, metrics, Postgres activity)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.booking.app import BookingApp, BookingSettings
from services.common import db
from services.common.auth import TokenVerifier
from services.common.clock import Clock, ManualClock
from services.common.server import RunningServer, start_server
from services.common.settings import CommonSettings
from services.event.app import EventApp, EventSettings
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def settings_env(database_url: str, **overrides: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "database_url": database_url,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_hs256_secret": HS256_SECRET,
        "public_base_url": "https://cowatch.test",
        "grpc_host": "127.0.0.1",
    }
    env.update(overrides)
    return env


def verifier() -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, hs256_secret=HS256_SECRET)


@contextlib.asynccontextmanager
async def app_server(
    app_cls: Callable[[Any, Clock], Any],
    settings_cls: type[CommonSettings],
    database_url: str,
    *,
    clock: Clock | None = None,
    readiness_interval: float = 0.1,
    **overrides: Any,
) -> AsyncIterator[tuple[RunningServer, grpc.aio.Channel]]:
    """``app_cls(settings, clock)`` served on an ephemeral port; ``overrides`` are settings (``redis_url=...``)."""
    settings = settings_cls(**settings_env(database_url, **overrides))
    app = app_cls(settings, clock or ManualClock(datetime.now(UTC)))
    running = await start_server(app, settings, verifier=verifier(), port=0, readiness_interval=readiness_interval)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, channel
    finally:
        await running.stop(2.0)


@contextlib.asynccontextmanager
async def event_server(
    database_url: str,
    *,
    clock: Clock | None = None,
    readiness_interval: float = 0.1,
    settings_cls: type[EventSettings] = EventSettings,
    **overrides: Any,
) -> AsyncIterator[tuple[RunningServer, event_grpc.EventServiceAsyncStub]]:
    """An EventService on an ephemeral port; ``overrides`` are settings (``redis_url=...``, ...)."""
    async with app_server(
        EventApp, settings_cls, database_url, clock=clock, readiness_interval=readiness_interval, **overrides
    ) as (running, channel):
        yield running, event_grpc.EventServiceStub(channel)


@contextlib.asynccontextmanager
async def event_and_booking_servers_with_redis(
    database_url: str, redis_url: str, key_prefix: str, clock: Clock
) -> AsyncIterator[tuple[event_grpc.EventServiceAsyncStub, booking_grpc.BookingServiceAsyncStub]]:
    """EventService and BookingService sharing one Redis, as in production, under ``key_prefix`` plus a random part
    (so a module's entries never meet another's)."""
    redis: dict[str, Any] = {"redis_url": redis_url, "redis_key_prefix": f"{key_prefix}{uuid.uuid4().hex[:6]}:"}
    async with (
        app_server(EventApp, EventSettings, database_url, clock=clock, **redis) as (_, event_channel),
        app_server(BookingApp, BookingSettings, database_url, clock=clock, **redis) as (_, booking_channel),
    ):
        yield event_grpc.EventServiceStub(event_channel), booking_grpc.BookingServiceStub(booking_channel)


@contextlib.asynccontextmanager
async def herd_booking_server(
    database_url: str, clock: Clock, verifier: TokenVerifier, *, channels: int, **overrides: Any
) -> AsyncIterator[tuple[BookingApp, list[booking_grpc.BookingServiceAsyncStub]]]:
    """A BookingService sized for a thundering herd (waits for a connection or a statement up to 60 s, WARNING
    logs; ``overrides`` are more settings) and ``channels`` stubs on separate HTTP/2 connections to it."""
    settings = BookingSettings(
        **settings_env(
            database_url,
            db_acquire_timeout_seconds=60,
            db_command_timeout_seconds=60,
            log_level="WARNING",
            **overrides,
        )
    )
    # db.create_pool makes the acquire timeout a process-wide default; put the previous one back afterwards so
    # the raised value doesn't leak into later tests.
    previous_acquire_timeout = db._acquire_timeout
    app = BookingApp(settings, clock)
    running = await start_server(app, settings, verifier=verifier, port=0)
    opened = [
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    try:
        yield app, [booking_grpc.BookingServiceStub(c) for c in opened]
    finally:
        for channel in opened:
            await channel.close()
        await running.stop(1.0)
        db._acquire_timeout = previous_acquire_timeout


async def health(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # type: ignore[arg-type, unused-ignore]
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(reply.status)


async def wait_until(predicate: Callable[[], Any], *, within: float, interval: float = 0.05) -> float:
    """Poll ``predicate`` (sync or async) until truthy; returns the seconds it took. Fails after ``within`` s."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return loop.time() - started
        if loop.time() - started > within:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


async def backends(conn: Any, application_name: str, *, waiting_on_lock: bool = False) -> int:
    """Postgres sessions of ``application_name`` (only those waiting on a lock, if asked)."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    if waiting_on_lock:
        sql += " AND wait_event_type = 'Lock'"
    return int(await conn.fetchval(sql, application_name))
