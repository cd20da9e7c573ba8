"""OpenTelemetry traces across one booking: the BookingService server span, its SQL statements as child spans,
the request's ``traceparent`` stored in the outbox row, and the worker's delivery of that row (a consumer span, a
client span for the Send call, the notification stand-in's server span) in the same trace, with ``traceparent``
arriving in the stand-in's metadata.

Real grpc.aio servers, a real worker and stand-in, a private migrated database; spans go to the SDK's
InMemorySpanExporter through the same :func:`services.common.tracing.configure` the processes call.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.common import tracing
from services.notification.standin import Delivery, Inbox
from tests.support.api import new_caller
from tests.support.bookings import book, new_event, uid
from tests.support.envoy import EnvoyProcess
from tests.support.notify import NotifyEnv, notify_env

pytestmark = pytest.mark.asyncio(loop_scope="session")

CREATE_BOOKING = "/cowatch.booking.v1.BookingService/CreateBooking"
SEND = "/cowatch.notification.v1.NotificationService/Send"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process (before any server or channel is built), into memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = tracing.configure("cowatch-test", processor=SimpleSpanProcessor(exporter), set_global=False)
    assert provider is not None
    try:
        yield exporter
    finally:
        tracing.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(spans: InMemorySpanExporter, pg_server_url: str) -> AsyncIterator[NotifyEnv]:
    async with notify_env(pg_server_url) as e:
        yield e


def traceparent_ids(value: str) -> tuple[int, int]:
    """``00-<trace id>-<parent span id>-<flags>`` → (trace id, span id). (Flags aside: the SDK may add the
    "random trace id" bit to "sampled".)"""
    version, trace_id, span_id, _flags = value.split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16)


def one(spans: list[ReadableSpan], **match: object) -> ReadableSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"{match}: {[(s.name, s.kind) for s in found]} of {[(s.name, s.kind) for s in spans]}"
    return found[0]


def about(inbox: Inbox, booking: str) -> list[Delivery]:
    return [d for d in inbox.deliveries if d.params.get("booking") == booking]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_booking_is_one_trace_from_the_rpc_to_the_notification_call(
    env: NotifyEnv, spans: InMemorySpanExporter
):
    guest = new_caller("Traced Guest")
    event = await new_event(env.events, env.clock, capacity=4)
    spans.clear()
    bookings: booking_grpc.BookingServiceAsyncStub = env.bookings
    booking = await bookings.CreateBooking(book(event, 1), metadata=guest.metadata)

    finished = list(spans.get_finished_spans())
    server = one(finished, name=CREATE_BOOKING, kind=SpanKind.SERVER)
    assert server.parent is None  # the caller sent no traceparent: the service started the trace
    trace_id = server.context.trace_id
    sql = [s for s in finished if s.kind == SpanKind.CLIENT and s.attributes and s.attributes.get("db.system")]
    assert sql, [s.name for s in finished]
    assert all(s.context.trace_id == trace_id and parent_id(s) == server.context.span_id for s in sql)
    statements = " ".join(str((s.attributes or {}).get("db.statement", "")) for s in sql)
    assert "booking.create_bookings(" in statements  # the booking write, outbox rows included, is one statement
    # Statements outside any request (readiness pings, the relay's polling) start no trace of their own.
    assert not [s for s in finished if s.kind == SpanKind.CLIENT and s.parent is None]

    rows = await env.pool.fetch(
        "SELECT dedupe_key, traceparent FROM notify.outbox WHERE params->>'booking' = $1", booking.name
    )
    assert rows, "the booking wrote no outbox row"
    for row in rows:
        assert row["traceparent"], row["dedupe_key"]
        assert traceparent_ids(row["traceparent"]) == (trace_id, server.context.span_id)

    spans.clear()
    async with env.worker():
        await env.inbox.wait_for(lambda inbox: len(about(inbox, booking.name)) >= len(rows), within=10.0)
    delivered = about(env.inbox, booking.name)
    sent = list(spans.get_finished_spans())
    assert {d.dedupe_key for d in delivered} == {r["dedupe_key"] for r in rows}
    for delivery in delivered:
        deliver = next(
            s
            for s in sent
            if s.kind == SpanKind.CONSUMER and (s.attributes or {}).get("messaging.message.id") == delivery.dedupe_key
        )
        assert deliver.context.trace_id == trace_id and parent_id(deliver) == server.context.span_id
        client = one([s for s in sent if parent_id(s) == deliver.context.span_id], kind=SpanKind.CLIENT, name=SEND)
        assert client.context.trace_id == trace_id
        # The stand-in received the trace context of the Send call, and continued it in its own server span.
        assert traceparent_ids(delivery.traceparent) == (trace_id, client.context.span_id)
        standin = one([s for s in sent if parent_id(s) == client.context.span_id], kind=SpanKind.SERVER, name=SEND)
        assert standin.context.trace_id == trace_id


async def test_a_callers_traceparent_is_continued_and_stored(env: NotifyEnv, spans: InMemorySpanExporter):
    event = await new_event(env.events, env.clock, capacity=4)
    caller_trace, caller_span = uuid.uuid4().int >> 1, uuid.uuid4().int >> 65
    traceparent = f"00-{caller_trace:032x}-{caller_span:016x}-01"
    spans.clear()
    guest = new_caller("Caller With Trace")
    booking = await env.bookings.CreateBooking(
        book(event, 1), metadata=(*guest.metadata, (tracing.TRACEPARENT, traceparent))
    )
    server = one(list(spans.get_finished_spans()), name=CREATE_BOOKING, kind=SpanKind.SERVER)
    assert server.context.trace_id == caller_trace
    assert parent_id(server) == caller_span and server.parent is not None and server.parent.is_remote
    stored = await env.pool.fetchval(
        "SELECT traceparent FROM notify.outbox WHERE params->>'booking' = $1 LIMIT 1", booking.name
    )
    assert stored is not None and traceparent_ids(stored)[0] == caller_trace
    assert uid(booking.name)


async def test_the_whole_path_from_a_client_through_envoy_to_the_notification_call(
    env: NotifyEnv, spans: InMemorySpanExporter, tmp_path: Path
):
    """Client (its own traceparent) → the real Envoy → BookingService → outbox row → worker → stand-in: one trace."""
    event_server, booking_server = env.servers
    upstreams = {
        "event": [("127.0.0.1", event_server.port)],
        "booking": [("127.0.0.1", booking_server.port)],
        "review": [("127.0.0.1", event_server.port)],  # unused (its health checks fail)
    }
    envoy = EnvoyProcess(upstreams, tmp_path)
    try:
        await asyncio.to_thread(envoy.start)
        await asyncio.to_thread(envoy.wait_healthy, {"event": 1, "booking": 1})
        event = await new_event(env.events, env.clock, capacity=4)
        client_trace, client_span = secrets.randbits(128) | 1, secrets.randbits(64) | 1
        traceparent = f"00-{client_trace:032x}-{client_span:016x}-01"
        guest = new_caller("Guest Behind Envoy")
        async with grpc.aio.insecure_channel(envoy.target) as channel:
            booking = await booking_grpc.BookingServiceStub(channel).CreateBooking(
                book(event, 1), metadata=(*guest.metadata, (tracing.TRACEPARENT, traceparent)), timeout=10
            )
    finally:
        await asyncio.to_thread(envoy.stop, 5)
    spans.clear()
    async with env.worker():
        await env.inbox.wait_for(lambda inbox: len(about(inbox, booking.name)) >= 2, within=10.0)
    delivered = about(env.inbox, booking.name)
    assert delivered and all(traceparent_ids(d.traceparent)[0] == client_trace for d in delivered)
    # (The worker also delivers what earlier tests left in the outbox, in their own traces.)
    sends = [s for s in spans.get_finished_spans() if s.name == SEND and s.kind == SpanKind.SERVER]
    assert len([s for s in sends if s.context.trace_id == client_trace]) == len(delivered)
