"""SIGTERM under load (README, "Degradation"): health turns NOT_SERVING at once, in-flight RPCs finish,
then the process exits 0. The real entry point (``python -m services.event``) runs as its own process, as in
production."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import grpc
import pytest
from cowatch.event.v1 import resources_pb2, service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from google.protobuf import field_mask_pb2

from services.dev.processes import free_port
from services.event.domain import parse_event_name
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER, new_caller
from tests.support.factories import create_request
from tests.support.servers import NOT_SERVING, SERVING, backends, health, wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "cowatch-event"
DRAIN = 1.0
IN_FLIGHT = 5


@contextlib.contextmanager
def event_process(database_url: str, port: int, drain: float = DRAIN) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "COWATCH_DATABASE_URL": database_url,
        "COWATCH_JWT_ISSUER": ISSUER,
        "COWATCH_JWT_AUDIENCE": AUDIENCE,
        "COWATCH_JWT_HS256_SECRET": HS256_SECRET,
        "COWATCH_GRPC_HOST": "127.0.0.1",
        "COWATCH_GRPC_PORT": str(port),
        "COWATCH_SHUTDOWN_DRAIN_SECONDS": str(drain),
        "COWATCH_SHUTDOWN_GRACE_SECONDS": "10",
        "COWATCH_LOG_LEVEL": "WARNING",
    }
    env.pop("COWATCH_REDIS_URL", None)
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "services.event"], env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _status_is(port: int, status: int) -> bool:
    try:
        return await health(port) == status
    except grpc.aio.AioRpcError:
        return False


def rename(name: str, title: str) -> service_pb2.UpdateEventRequest:
    return service_pb2.UpdateEventRequest(
        event=resources_pb2.Event(name=name, title=title), update_mask=field_mask_pb2.FieldMask(paths=["title"])
    )


async def test_sigterm_under_load_fails_no_in_flight_call(database_url: str, db_pool: asyncpg.Pool):
    port = free_port()
    with event_process(database_url, port) as proc:
        await wait_until(lambda: _status_is(port, SERVING), within=30, interval=0.1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            events = event_grpc.EventServiceStub(channel)
            host = new_caller()
            created = await events.CreateEvent(create_request(datetime.now(UTC)), metadata=host.metadata, timeout=5)
            get = service_pb2.GetEventRequest(name=created.name)
            calls: list[tuple[float, str]] = []  # (start, code) of the background load
            stop_load = asyncio.Event()

            async def reader() -> None:
                while not stop_load.is_set():
                    started = time.perf_counter()
                    try:
                        await events.GetEvent(get, timeout=5)
                        calls.append((started, "OK"))
                    except grpc.aio.AioRpcError as exc:
                        calls.append((started, exc.code().name))
                        if exc.code() is grpc.StatusCode.UNAVAILABLE:
                            return  # the server is going away: a client would fail over to another replica

            async with db_pool.acquire() as locker, db_pool.acquire() as watcher:
                async with locker.transaction():
                    # slow in-flight calls: updates queued behind a row lock we hold
                    await locker.execute(
                        "SELECT 1 FROM event.events WHERE id = $1 FOR UPDATE", parse_event_name(created.name)
                    )
                    updates = [
                        asyncio.ensure_future(
                            events.UpdateEvent(rename(created.name, f"u{n}"), metadata=host.metadata, timeout=20)
                        )
                        for n in range(IN_FLIGHT)
                    ]
                    await wait_until(
                        lambda: _at_least(backends(watcher, APP_NAME, waiting_on_lock=True), IN_FLIGHT), within=15
                    )
                    readers = [asyncio.ensure_future(reader()) for _ in range(4)]
                    await asyncio.sleep(0.5)

                    signalled = time.perf_counter()
                    proc.send_signal(signal.SIGTERM)
                    # health says NOT_SERVING at once, while the server still accepts RPCs (drain)
                    await wait_until(lambda: _status_is(port, NOT_SERVING), within=DRAIN * 0.8, interval=0.02)
                    await asyncio.sleep(DRAIN + 0.5)  # drain over: new RPCs refused, in-flight ones still running
                    assert proc.poll() is None
                    assert not any(u.done() for u in updates)
                # lock released: every in-flight update completes
                results = await asyncio.gather(*updates, return_exceptions=True)
            stop_load.set()
            await asyncio.gather(*readers)

        assert all(isinstance(r, resources_pb2.Event) for r in results), results
        assert await asyncio.to_thread(proc.wait, 15) == 0
        assert sum(1 for _, code in calls if code == "OK") > 50
        # Load before the signal and during the drain was served (health said NOT_SERVING, so a load balancer
        # had moved away). Calls after the drain are refused with UNAVAILABLE (retried by clients and Envoy), never
        # CANCELLED: the server answers whatever grpc-core already took in before it stops.
        drain_end = signalled + DRAIN - 0.05
        assert all(code == "OK" for started, code in calls if started < drain_end)
        assert any(signalled < started < drain_end for started, _ in calls)  # served while draining
        assert {code for started, code in calls if started >= drain_end} <= {"OK", "UNAVAILABLE"}
        row = await db_pool.fetchrow(
            "SELECT title, version FROM event.events WHERE id = $1", parse_event_name(created.name)
        )
        assert row is not None and row["version"] == 1 + IN_FLIGHT and row["title"].startswith("u")


async def _at_least(value: Awaitable[int], n: int) -> bool:
    return await value >= n


async def test_sigterm_right_after_a_burst_cancels_nothing(database_url: str, db_pool: asyncpg.Pool):
    """No drain: 24 RPCs sent (8 of them held in flight by a row lock), SIGTERM at once. Every call ends OK or, if the
    server refused it because it was going away, UNAVAILABLE (which clients and Envoy retry): never CANCELLED."""
    port = free_port()
    with event_process(database_url, port, drain=0.0) as proc:
        await wait_until(lambda: _status_is(port, SERVING), within=30, interval=0.1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            events = event_grpc.EventServiceStub(channel)
            host = new_caller()
            created = await events.CreateEvent(create_request(datetime.now(UTC)), metadata=host.metadata, timeout=5)
            get = service_pb2.GetEventRequest(name=created.name)
            await events.GetEvent(get, timeout=5)
            async with db_pool.acquire() as locker, db_pool.acquire() as watcher:
                async with locker.transaction():
                    await locker.execute(
                        "SELECT 1 FROM event.events WHERE id = $1 FOR UPDATE", parse_event_name(created.name)
                    )
                    updates = [
                        asyncio.ensure_future(
                            events.UpdateEvent(rename(created.name, f"b{n}"), metadata=host.metadata, timeout=20)
                        )
                        for n in range(8)
                    ]
                    await wait_until(lambda: _at_least(backends(watcher, APP_NAME, waiting_on_lock=True), 8), within=15)
                    reads = [asyncio.ensure_future(events.GetEvent(get, timeout=10)) for _ in range(16)]
                    await asyncio.sleep(0)  # the reads are on the wire
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.sleep(0.5)
                results = await asyncio.gather(*updates, *reads, return_exceptions=True)
        codes = [r.code().name if isinstance(r, grpc.aio.AioRpcError) else "OK" for r in results]
        assert "CANCELLED" not in codes, str(codes)
        assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
        assert codes[:8] == ["OK"] * 8, codes  # in flight when the signal came: finished
        assert await asyncio.to_thread(proc.wait, 15) == 0
