"""The files deploy/k8s/base turns into ConfigMaps, copied or rendered from their one source: kustomize reads
only files under the kustomization's own directory, so they are committed there, and ``--check`` (run by
tests/deploy/test_k8s.py) fails when one differs from what this writes.

- ``envoy/envoy.yaml``: envoy/envoy.yaml rendered by services/dev/compose_envoy.py, as the compose image does: the
  upstreams are the names ``event``/``booking``/``review`` on their default ports, which in Kubernetes are the
  headless Services of the same names (one address per ready pod, STRICT_DNS).
- ``envoy/cowatch.binpb``: the descriptor set Envoy transcodes JSON with (gen/descriptors, from ``make gen``).
- ``nginx/nginx.conf.template``: nginx/nginx.conf as it is (the nginx image fills its ``${COWATCH_NGINX_*}``
  placeholders at start-up, as under compose).

    .venv/bin/python -m services.dev.k8s_assets           # write them
    .venv/bin/python -m services.dev.k8s_assets --check   # exit 1, naming the stale files
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

from services.dev.compose_envoy import render_envoy

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
BASE: Final = REPO_ROOT / "deploy" / "k8s" / "base"
K8S_HEADER: Final = (
    "# Generated: do not edit. The compose render, copied here by services/dev/k8s_assets.py: in Kubernetes the\n"
    "# upstream names are the headless Services event, booking and review (deploy/k8s/base).\n"
)


def expected() -> dict[Path, bytes]:
    """Each committed file under deploy/k8s/base and the bytes it must hold."""
    return {
        BASE / "envoy" / "envoy.yaml": (K8S_HEADER + render_envoy()).encode(),
        BASE / "envoy" / "cowatch.binpb": (REPO_ROOT / "gen" / "descriptors" / "cowatch.binpb").read_bytes(),
        BASE / "nginx" / "nginx.conf.template": (REPO_ROOT / "nginx" / "nginx.conf").read_bytes(),
    }


def stale() -> list[Path]:
    return [path for path, data in expected().items() if not path.is_file() or path.read_bytes() != data]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.dev.k8s_assets", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a file is stale")
    args = parser.parse_args(argv)
    if args.check:
        paths = stale()
        for path in paths:
            print(f"stale: {path.relative_to(REPO_ROOT)} (run: .venv/bin/python -m services.dev.k8s_assets)")
        return 1 if paths else 0
    for path, data in expected().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
