"""Overload (README, "Degradation"): beyond the server's concurrency limit, requests are refused at once with
RESOURCE_EXHAUSTED (not queued into timeouts), health keeps answering, and the admitted ones finish normally."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import grpc
import pytest
from cowatch.event.v1 import resources_pb2, service_pb2
from google.protobuf import field_mask_pb2

from services.event.domain import parse_event_name
from tests.support.api import new_caller, rich_error
from tests.support.factories import create_request
from tests.support.servers import SERVING, event_server, health, wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


def rename(name: str, title: str) -> service_pb2.UpdateEventRequest:
    return service_pb2.UpdateEventRequest(
        event=resources_pb2.Event(name=name, title=title), update_mask=field_mask_pb2.FieldMask(paths=["title"])
    )


async def timed(call: object) -> tuple[float, str, str]:
    started = time.perf_counter()
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        err = rich_error(exc)
        return time.perf_counter() - started, err.code.name, err.reason
    return time.perf_counter() - started, "OK", ""


async def test_beyond_the_limit_requests_are_refused_at_once_while_admitted_ones_finish(
    database_url: str, db_pool: asyncpg.Pool
):
    async with event_server(database_url, max_concurrent_rpcs=8) as (running, events):
        host = new_caller()
        created = await events.CreateEvent(create_request(datetime.now(UTC)), metadata=host.metadata)
        async with db_pool.acquire() as locker, locker.transaction():
            # every admitted UpdateEvent now waits for this row lock: the server is "busy"
            await locker.execute("SELECT 1 FROM event.events WHERE id = $1 FOR UPDATE", parse_event_name(created.name))
            admitted = [
                asyncio.ensure_future(
                    events.UpdateEvent(rename(created.name, f"t{n}"), metadata=host.metadata, timeout=20)
                )
                for n in range(8)
            ]
            await wait_until(lambda: running.interceptor.in_flight == 8, within=5)

            outcomes = await asyncio.gather(
                *(timed(events.GetEvent(service_pb2.GetEventRequest(name=created.name), timeout=5)) for _ in range(300))
            )
            assert {(code, reason) for _, code, reason in outcomes} == {("RESOURCE_EXHAUSTED", "SERVER_OVERLOADED")}
            assert max(seconds for seconds, _, _ in outcomes) < 1.0  # refused, not queued until the 5 s deadline
            assert await health(running.port) == SERVING  # probes are never refused
            assert all(not call.done() for call in admitted)
        # lock released (transaction over): the admitted calls complete normally
        replies = await asyncio.gather(*admitted)
        assert len(replies) == 8
        assert (await events.GetEvent(service_pb2.GetEventRequest(name=created.name), timeout=5)).name == created.name
        refused = running.metrics.value(
            "grpc_server_handled_total", {"grpc_method": "GetEvent", "grpc_code": "RESOURCE_EXHAUSTED"}
        )
        assert refused == 300


async def test_a_burst_far_beyond_capacity_gets_answers_or_fast_refusals_never_timeouts(database_url: str):
    async with event_server(database_url, max_concurrent_rpcs=4) as (_running, events):
        request = service_pb2.ListEventsRequest(city="Nowhere-overload", page_size=50)
        outcomes = await asyncio.gather(*(timed(events.ListEvents(request, timeout=3)) for _ in range(400)))
        codes = Counter(code for _, code, _ in outcomes)
        assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
        refused = sorted(seconds for seconds, code, _ in outcomes if code == "RESOURCE_EXHAUSTED")
        assert refused[int(len(refused) * 0.99)] < 1.0
