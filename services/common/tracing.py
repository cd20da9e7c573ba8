"""OpenTelemetry traces: off by default, on by the OpenTelemetry specification's own ``OTEL_*`` variables
(:class:`~services.common.settings.TracingSettings`), built from the maintained instrumentations rather than
hand-written spans wherever one exists.

What a trace holds (docs/architecture.md, "Traces"):

- a **server span** per RPC (``opentelemetry-instrumentation-grpc``'s grpc.aio server interceptor, installed in
  front of :class:`~services.common.interceptors.RpcInterceptor`), continuing the caller's W3C ``traceparent``:
  Envoy forwards the client's, or starts one itself when its tracing is on;
- a **client span per SQL statement** (``opentelemetry-instrumentation-asyncpg``), a child of whatever span is
  current;
- the request's ``traceparent`` **stored in the outbox row** its transaction writes
  (:func:`current_traceparent`, called by :mod:`services.notification.outbox`), so the delivery, seconds or
  hours later and in another process, is a **consumer span** of the same trace (:func:`continued`), and the
  notification call under it a **client span** (the grpc.aio client interceptors, :func:`client_interceptors`)
  that sends ``traceparent`` on to the notification service.

When tracing is off nothing is installed: no interceptor on the server or the channel, asyncpg unpatched, and the
outbox write pays one module-global test. So the per-RPC cost of a process without tracing is unchanged.

SQL statements outside any span (readiness pings, the relay's polling and bookkeeping, the reminder scheduler)
would each start a trace of their own, one a second per process for nothing: :func:`_no_orphan_clients` drops
root spans of kind CLIENT and leaves every other decision to the sampler ``OTEL_TRACES_SAMPLER`` names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.settings import TracingSettings

if TYPE_CHECKING:
    import grpc
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler, SamplingResult
    from opentelemetry.trace import Link, SpanKind, TraceState
    from opentelemetry.util.types import Attributes

__all__ = [
    "TRACEPARENT",
    "client_interceptors",
    "configure",
    "continued",
    "current_traceparent",
    "enabled",
    "server_interceptors",
    "shutdown",
]

TRACEPARENT: Final = "traceparent"
"""The W3C trace-context header (and gRPC metadata key, and ``notify.outbox`` column)."""
TRACER_NAME: Final = "cowatch"
UNTRACED_SERVICES: Final = ("grpc.health.v1.", "grpc.reflection.")
"""Probes and tooling: Envoy's health checks alone would be a trace per second per cluster."""

_W3C: Final = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_asyncpg: Any = None  # the AsyncPGInstrumentor, to undo its patches on shutdown


def enabled() -> bool:
    return _provider is not None


def configure(
    service_name: str,
    settings: TracingSettings | None = None,
    *,
    processor: SpanProcessor | None = None,
    set_global: bool = True,
) -> TracerProvider | None:
    """Install tracing for this process if ``settings`` (default: the environment) turn it on, or a ``processor``
    is given (tests pass ``SimpleSpanProcessor(InMemorySpanExporter())``); returns the provider, ``None`` if off.

    ``service_name`` is the resource's ``service.name`` unless ``OTEL_SERVICE_NAME`` says otherwise. Call once,
    before the server or channel is built (they pick up :func:`server_interceptors` / :func:`client_interceptors`
    then); :func:`shutdown` flushes and undoes it.
    """
    global _provider, _asyncpg
    if _provider is not None:
        raise RuntimeError("tracing is already configured in this process")
    settings = settings if settings is not None else TracingSettings()
    if processor is None:
        processor = _processor(settings)
        if processor is None:
            return None
    # Imported here: a process without tracing never loads the SDK, the exporter or the instrumentations.
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, the latter over our default.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource, sampler=_no_orphan_clients(_env_sampler()))
    provider.add_span_processor(processor)
    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    instrumentor.instrument(tracer_provider=provider)
    _provider, _asyncpg = provider, instrumentor
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def shutdown() -> None:
    """Flush pending spans (the batch processor holds up to 5 s of them) and uninstall; safe when off."""
    global _provider, _asyncpg
    provider, instrumentor = _provider, _asyncpg
    _provider = _asyncpg = None
    if instrumentor is not None:
        instrumentor.uninstrument()
    if provider is not None:
        provider.shutdown()


def _processor(settings: TracingSettings) -> SpanProcessor | None:
    exporter_name = settings.exporter
    if exporter_name is None:
        return None
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        # gRPC, not http/protobuf: grpcio is already here, the HTTP one would bring requests and urllib3. The
        # exporter reads OTEL_EXPORTER_OTLP_[TRACES_]{ENDPOINT,HEADERS,TIMEOUT,INSECURE,CERTIFICATE} itself.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    return BatchSpanProcessor(exporter)


def _env_sampler() -> Sampler:
    # The SDK's own reading of OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default parentbased_always_on),
    # which TracerProvider uses when given no sampler; we wrap it, so we ask for it by name.
    from opentelemetry.sdk.trace import sampling

    return sampling._get_from_env_or_default()


def _no_orphan_clients(delegate: Sampler) -> Sampler:
    """A sampler: a CLIENT span with no parent (a database call outside any request) is dropped; everything else
    is up to ``delegate``. (Defined here: the SDK is imported only once tracing is on.)"""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class NoOrphanClients(Sampler):
        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: TraceState | None = None,
        ) -> SamplingResult:
            parent = trace.get_current_span(parent_context).get_span_context()
            if kind == trace.SpanKind.CLIENT and not parent.is_valid:
                return SamplingResult(Decision.DROP)
            return delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"NoOrphanClients{{{delegate.get_description()}}}"

    return NoOrphanClients()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The interceptor that opens each RPC's server span (put it first: the span then covers the others), or
    none when tracing is off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    traced = filters.negate(filters.any_of(*(filters.service_prefix(p) for p in UNTRACED_SERVICES)))
    return [aio_server_interceptor(tracer_provider=_provider, filter_=traced)]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for a grpc.aio channel: a client span per call, ``traceparent`` in its metadata; none when
    tracing is off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=_provider
    )
    return interceptors


def current_traceparent() -> str | None:
    """The current span's W3C ``traceparent``, to store beside work done later elsewhere (an outbox row); ``None``
    when tracing is off or no span is current."""
    if _provider is None:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get(TRACEPARENT)


@contextlib.contextmanager
def continued(traceparent: str | None, name: str, attributes: Mapping[str, str | int] | None = None) -> Iterator[None]:
    """A CONSUMER span, current inside the block, continuing the trace ``traceparent`` names (a new trace when it
    is empty or malformed); does nothing when tracing is off."""
    if _provider is None:
        yield
        return
    parent = _W3C.extract({TRACEPARENT: traceparent}) if traceparent else None
    tracer = _provider.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes):
        yield
