"""docker-compose.yml's generated input: ``envoy/envoy.compose.yaml``, ``envoy/envoy.yaml`` rendered for the compose
network (services/dev/envoy_config.py). Each cluster names one compose service; Envoy's clusters are STRICT_DNS,
so every replica behind that name (``docker compose up --scale booking=3``) is in its cluster, re-resolved every
5 s. tests/unit/test_compose.py fails when the committed file is stale.

    .venv/bin/python -m services.dev.compose_envoy      # rewrite envoy/envoy.compose.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from services.dev import envoy_config

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
ENVOY_COMPOSE: Final = REPO_ROOT / "envoy" / "envoy.compose.yaml"
COMPOSE_FILE: Final = REPO_ROOT / "docker-compose.yml"
# Envoy cluster → (compose service name, gRPC port): the services' default ports, set again in compose.
UPSTREAMS: Final = {"event": ("event", 50051), "booking": ("booking", 50052), "review": ("review", 50053)}
DESCRIPTOR_IN_CONTAINER: Final = "/etc/envoy/cowatch.binpb"
HEADER: Final = (
    "# envoy/envoy.yaml rendered for docker-compose.yml by `.venv/bin/python -m services.dev.compose_envoy`:\n"
    "# do not edit (tests/unit/test_compose.py fails when it differs from a fresh rendering).\n"
)


def render_envoy() -> str:
    text = envoy_config.render(
        upstreams={cluster: [(host, port)] for cluster, (host, port) in UPSTREAMS.items()},
        descriptor=DESCRIPTOR_IN_CONTAINER,
        web=False,  # NGINX serves the web page (nginx/nginx.conf)
    )
    _, _, body = text.partition("\n")  # envoy_config's own header names an absolute path
    return HEADER + body


def main() -> int:
    ENVOY_COMPOSE.write_text(render_envoy(), encoding="utf-8")
    print(f"wrote {ENVOY_COMPOSE.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
