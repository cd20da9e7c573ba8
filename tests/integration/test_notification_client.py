"""The notification client against the stand-in over real gRPC: retries only on UNAVAILABLE, a deadline on every
call, x-request-id propagated, dedupe by key, and the stand-in refusing what a template could not render."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from services.common.grpc_errors import parse_error_details
from services.notification.client import NotificationClient, SendResult
from services.notification.standin import StandIn
from tests.support.notify import params

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def standin() -> AsyncIterator[StandIn]:
    s = StandIn(log_messages=False)
    await s.start(0)
    yield s
    await s.stop(0)


@pytest_asyncio.fixture(loop_scope="session")
async def client(standin: StandIn) -> AsyncIterator[NotificationClient]:
    c = NotificationClient(standin.address, timeout_seconds=0.5, retry_attempts=3)
    yield c
    await c.close()


async def send(client: NotificationClient, key: str = "k1", **kwargs: Any) -> SendResult:
    message: dict[str, Any] = {
        "dedupe_key": key,
        "recipients": ["u-1"],
        "template_id": "event_cancelled",
        "params": params(),
    }
    message.update(kwargs)
    return await client.send(**message)


async def test_unavailable_is_retried_within_the_call(standin: StandIn, client: NotificationClient):
    standin.fail_next(2, grpc.StatusCode.UNAVAILABLE)
    result = await send(client)
    assert not result.duplicate
    assert standin.inbox.calls == 3  # two refusals, then through: one call for the caller


async def test_other_errors_are_not_retried(standin: StandIn, client: NotificationClient):
    standin.fail_next(1, grpc.StatusCode.INTERNAL)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await send(client)
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert standin.inbox.calls == 1


async def test_every_call_has_a_deadline(standin: StandIn, client: NotificationClient):
    standin.delay_seconds = 5.0
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await send(client)
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1.5


async def test_request_id_travels_and_repeats_are_acknowledged_as_duplicates(
    standin: StandIn, client: NotificationClient
):
    first = await send(client, "same-key", request_id="req-42")
    again = await send(client, "same-key", request_id="req-43")
    assert (first.duplicate, again.duplicate) == (False, True)
    assert first.notification_id == again.notification_id
    (d,) = standin.inbox.deliveries
    assert d.request_id == "req-42" and d.recipients == ("users/u-1",)


async def test_the_standin_refuses_what_a_template_could_not_render(standin: StandIn, client: NotificationClient):
    incomplete = params()
    del incomplete["start_local"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await send(client, params=incomplete)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = parse_error_details(info.value.trailing_metadata())
    assert details is not None
    assert details.reason == "INVALID_NOTIFICATION"
    assert ("params.start_local", "is required by template event_cancelled") in details.field_violations
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await send(client, "k2", template_id="nope", recipients=["users/"])
    fields = dict(parse_error_details(info.value.trailing_metadata()).field_violations)  # type: ignore[union-attr]
    assert set(fields) == {"template_id", "recipients[0]"}
    assert standin.inbox.deliveries == []


async def test_a_restarted_standin_with_a_record_file_remembers_the_keys_it_accepted(tmp_path: Path):
    record = tmp_path / "standin.jsonl"
    first = StandIn(log_messages=False, record=record)
    port = await first.start(0)
    c = NotificationClient(first.address, timeout_seconds=2.0)
    try:
        sent = await send(c, "restart/1")
        await first.stop(0)
        # A new process on the same record file: the real service's dedupe survives its restarts, so does this one.
        second = StandIn(log_messages=False, record=record)
        await second.start(port)
        try:
            again = await send(c, "restart/1")
            fresh = await send(c, "restart/2")
        finally:
            await second.stop(0)
    finally:
        await c.close()
    assert not sent.duplicate and again.duplicate and not fresh.duplicate
    assert again.notification_id == sent.notification_id
    assert second.inbox.deliveries == [second.inbox.by_key["restart/2"]]
