"""Envoy's tracing: off as envoy/envoy.yaml is written (the client's traceparent passes through untouched), on with
a collector to report to (make run: the OTEL_* endpoint; compose and the CLI: --otlp-collector), and Envoy accepts
the result. tests/e2e/test_tracing_envoy.py runs both through the real binary."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.dev import compose_envoy, envoy_config


def hcm_and_clusters(text: str) -> tuple[dict[str, object], list[str]]:
    config = yaml.safe_load(text)
    clusters = [c["name"] for c in config["static_resources"]["clusters"]]
    return envoy_config._hcm(config), clusters


def test_off_as_written() -> None:
    hcm, clusters = hcm_and_clusters(envoy_config.render())
    assert "tracing" not in hcm and envoy_config.OTLP_CLUSTER not in clusters
    hcm, clusters = hcm_and_clusters(compose_envoy.render_envoy())
    assert "tracing" not in hcm and envoy_config.OTLP_CLUSTER not in clusters


def test_on_with_a_collector_and_envoy_accepts_it(tmp_path: Path) -> None:
    text = compose_envoy.render_envoy(descriptor=str(envoy_config.DESCRIPTOR), otlp_collector=("otel-collector", 4317))
    hcm, clusters = hcm_and_clusters(text)
    provider = hcm["tracing"]["provider"]  # type: ignore[index]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == envoy_config.OTLP_CLUSTER
    assert envoy_config.OTLP_CLUSTER in clusters
    path = tmp_path / "envoy.yaml"
    path.write_text(text, encoding="utf-8")
    envoy_config.validate(path)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317"}, ("otel-collector", 4317)),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4318"},
            ("b", 4318),
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_TRACES_EXPORTER": "console"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://no-port"}, None),
    ],
)
def test_make_run_takes_the_collector_from_the_processes_variables(
    env: dict[str, str], expected: tuple[str, int] | None
) -> None:
    assert envoy_config.otlp_collector_from_env(env) == expected
