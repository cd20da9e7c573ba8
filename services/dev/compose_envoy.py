"""``envoy/envoy.yaml`` rendered for the docker compose network, at image build time (the Dockerfile's ``envoy``
stage runs this; nothing generated is committed). Each cluster names one compose service; Envoy's clusters are
STRICT_DNS, so every replica behind that name (``docker compose up --scale booking=3``) is in its cluster,
re-resolved every 5 s. tests/unit/test_compose.py checks the result against docker-compose.yml and validates it
with Envoy.

    .venv/bin/python -m services.dev.compose_envoy -o envoy.compose.yaml     # what the image build does
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Final

from services.dev import envoy_config

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
COMPOSE_FILE: Final = REPO_ROOT / "docker-compose.yml"
# Envoy cluster → (compose service name, gRPC port): the services' default ports, set again in compose.
UPSTREAMS: Final = {"event": ("event", 50051), "booking": ("booking", 50052), "review": ("review", 50053)}
DESCRIPTOR_IN_CONTAINER: Final = "/etc/envoy/cowatch.binpb"
CONFIG_IN_CONTAINER: Final = "/etc/envoy/envoy.yaml"
HEADER: Final = "# envoy/envoy.yaml rendered for docker-compose.yml by services/dev/compose_envoy.py at image build.\n"


def render_envoy(descriptor: str = DESCRIPTOR_IN_CONTAINER, otlp_collector: envoy_config.Upstream | None = None) -> str:
    text = envoy_config.render(
        upstreams={cluster: [(host, port)] for cluster, (host, port) in UPSTREAMS.items()},
        descriptor=descriptor,
        web=False,  # NGINX serves the web page (nginx/nginx.conf)
        otlp_collector=otlp_collector,  # None: Envoy forwards the client's traceparent and starts no trace
    )
    _, _, body = text.partition("\n")  # envoy_config's own header names an absolute path
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.dev.compose_envoy", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="-", help="output file (default stdout)")
    parser.add_argument(
        "--otlp-collector",
        default=None,
        metavar="HOST:PORT",
        help="turn on Envoy's tracer, reporting to this OTLP/gRPC collector (e.g. otel-collector:4317)",
    )
    args = parser.parse_args(argv)
    collector = envoy_config.parse_upstream(args.otlp_collector) if args.otlp_collector else None
    text = render_envoy(otlp_collector=collector)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
