"""Tracing is off unless the OpenTelemetry variables turn it on, and when off installs nothing on the hot path."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing
from services.common.settings import TracingSettings, load_settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No OTEL_* from the machine running the tests; tracing shut down afterwards whatever the test did."""
    for name in list(os.environ):
        if name.upper().startswith("OTEL_"):
            monkeypatch.delenv(name)
    yield monkeypatch
    tracing.shutdown()


def test_off_by_default(env: pytest.MonkeyPatch) -> None:
    assert TracingSettings().exporter is None
    assert tracing.configure("cowatch-test") is None
    assert not tracing.enabled()
    assert tracing.server_interceptors() == [] and tracing.client_interceptors() == []
    assert tracing.current_traceparent() is None
    with tracing.continued("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x"):
        assert not trace.get_current_span().get_span_context().is_valid


@pytest.mark.parametrize(
    ("variables", "exporter"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "OTLP"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_EXPORTER": "none"}, None),
    ],
)
def test_the_specifications_variables_turn_it_on(
    env: pytest.MonkeyPatch, variables: dict[str, str], exporter: str | None
) -> None:
    for name, value in variables.items():
        env.setenv(name, value)
    assert TracingSettings().exporter == exporter


def test_an_unsupported_protocol_is_refused_naming_the_variable(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with pytest.raises(SystemExit) as exit_info:
        load_settings(TracingSettings)
    assert exit_info.value.code == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in capsys.readouterr().err


def test_on_a_span_is_current_inside_continued_and_its_traceparent_is_given(env: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    assert tracing.configure("cowatch-test", processor=SimpleSpanProcessor(exporter), set_global=False) is not None
    assert len(tracing.server_interceptors()) == 1 and len(tracing.client_interceptors()) == 4
    assert tracing.current_traceparent() is None  # no span current
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with tracing.continued(parent, "outbox deliver"):
        inner = tracing.current_traceparent()
    assert inner is not None and inner.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    (span,) = exporter.get_finished_spans()
    assert span.name == "outbox deliver" and span.kind == trace.SpanKind.CONSUMER
    assert span.parent is not None and span.parent.span_id == 0xB7AD6B7169203331
    assert span.resource.attributes["service.name"] == "cowatch-test"
    with tracing.continued("garbage", "outbox deliver"):  # a malformed value starts a new trace
        pass
    assert exporter.get_finished_spans()[-1].parent is None


def test_otel_service_name_wins_over_the_processs_default(env: pytest.MonkeyPatch) -> None:
    env.setenv("OTEL_SERVICE_NAME", "booking-eu-1")
    exporter = InMemorySpanExporter()
    tracing.configure("cowatch-booking", processor=SimpleSpanProcessor(exporter), set_global=False)
    with tracing.continued(None, "x"):
        pass
    assert exporter.get_finished_spans()[0].resource.attributes["service.name"] == "booking-eu-1"
