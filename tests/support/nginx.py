"""NGINX (nginx/nginx.conf) for end-to-end tests and benchmarks: render the template, validate it, run it.

``nginx/nginx.conf`` is the one source of truth; its ``${COWATCH_NGINX_*}`` placeholders are the only things that
differ between deployments (compose fills them from the environment, envsubst-style). ``render()`` fills them here,
with :data:`DEFAULTS` (the compose values) for whatever is not given.

    .venv/bin/python -m tests.support.nginx --validate              # render with the defaults, nginx -t
    .venv/bin/python -m tests.support.nginx --envoy 127.0.0.1:8080 -o /tmp/nginx.conf
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from services.dev.processes import free_port
from tests.support import tools
from tests.support.envoy import _Process

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
NGINX_CONFIG: Final = REPO_ROOT / "nginx" / "nginx.conf"
TLS_EXAMPLE: Final = REPO_ROOT / "nginx" / "tls.conf.example"
PLACEHOLDER: Final = re.compile(r"\$\{(COWATCH_NGINX_[A-Z0-9_]+)\}")

DEFAULTS: Final[Mapping[str, str]] = {
    "COWATCH_NGINX_ENVOY": "envoy:8080",
    "COWATCH_NGINX_HTTP_LISTEN": "8080",
    "COWATCH_NGINX_GRPC_LISTEN": "8081",
    "COWATCH_NGINX_RATE": "50r/s",
    "COWATCH_NGINX_BURST": "100",
    "COWATCH_NGINX_MAX_BODY": "1m",
    "COWATCH_NGINX_WEB_ROOT": "/usr/share/nginx/cowatch",
    "COWATCH_NGINX_MAX_CONNS": "100",
    "COWATCH_NGINX_CLIENT_TIMEOUT": "10s",
}


def placeholders(source: str | Path = NGINX_CONFIG) -> set[str]:
    return set(PLACEHOLDER.findall(Path(source).read_text(encoding="utf-8")))


def render(values: Mapping[str, str] | None = None, *, source: str | Path = NGINX_CONFIG) -> str:
    """The template with every placeholder filled from ``values``, else :data:`DEFAULTS`."""
    merged = {**DEFAULTS, **(values or {})}
    unknown = set(values or {}) - placeholders(source)
    if unknown:
        raise ValueError(f"{source} has no placeholder(s) {sorted(unknown)}")

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in merged:
            raise ValueError(f"no value for ${{{name}}} in {source}")
        return merged[name]

    return PLACEHOLDER.sub(fill, Path(source).read_text(encoding="utf-8"))


def nginx_binary() -> str:
    """nginx on PATH or in /usr/sbin; a clear error when it is not installed."""
    found = tools.find("nginx")
    if found is None:
        raise FileNotFoundError(tools.missing_line("nginx"))
    return found


def validate(config: Path, prefix: Path) -> None:
    """``nginx -t``; raises ``ValueError`` with NGINX's complaint."""
    result = subprocess.run(
        [nginx_binary(), "-t", "-q", "-p", str(prefix), "-c", str(config), "-g", "error_log stderr;"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        raise ValueError(f"nginx rejects {config}:\n{result.stdout}{result.stderr}")


def write_config(workdir: Path, values: Mapping[str, str] | None = None, name: str = "nginx.conf") -> Path:
    """Render into ``workdir`` (which becomes NGINX's prefix: pid file and temp dirs go there)."""
    (workdir / "temp").mkdir(parents=True, exist_ok=True)
    path = workdir / name
    path.write_text(render(values), encoding="utf-8")
    return path


_handed_out: set[int] = set()


def _unused_port() -> int:
    """A free port not given to another NGINX of this process (free_port() alone may repeat itself before the
    first NGINX has bound its ports)."""
    while (port := free_port()) in _handed_out:
        pass
    _handed_out.add(port)
    return port


class NginxProcess(_Process):
    """NGINX from nginx/nginx.conf in front of Envoy at ``envoy``, on free ports on 127.0.0.1, in the
    foreground (``daemon off``), its own prefix in ``workdir``. ``values`` override placeholders (rate limits...)."""

    def __init__(self, envoy: tuple[str, int], workdir: Path, values: Mapping[str, str] | None = None) -> None:
        self.name = f"nginx-{workdir.name}"
        self.workdir = workdir
        self.http_port = _unused_port()
        self.grpc_port = _unused_port()
        self.log_path = workdir / "nginx.log"
        self.config_path = write_config(
            workdir,
            {
                "COWATCH_NGINX_ENVOY": f"{envoy[0]}:{envoy[1]}",
                "COWATCH_NGINX_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
                "COWATCH_NGINX_GRPC_LISTEN": f"127.0.0.1:{self.grpc_port}",
                "COWATCH_NGINX_WEB_ROOT": str(REPO_ROOT / "web" / "dist"),
                **(values or {}),
            },
        )

    @property
    def url(self) -> str:
        """HTTP/1.1: JSON and gRPC-web."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        """h2c, for ``grpc.aio.insecure_channel``."""
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 15.0) -> NginxProcess:
        validate(self.config_path, self.workdir)
        self._spawn(
            [nginx_binary(), "-p", str(self.workdir), "-c", str(self.config_path), "-g", "daemon off;"],
            {**os.environ},
        )
        deadline = time.monotonic() + timeout
        while not self._live():
            self.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx not answering after {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def _live(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/nginx-health", timeout=1) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def access_log(self) -> list[dict[str, Any]]:
        """The JSON access log lines so far (NGINX writes them to stdout, i.e. the log file)."""
        entries = []
        for line in self.log_tail(100000).splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
        return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render nginx/nginx.conf (placeholders from DEFAULTS/options).")
    for name, default in DEFAULTS.items():
        option = "--" + name.removeprefix("COWATCH_NGINX_").lower().replace("_", "-")
        parser.add_argument(option, dest=name, default=None, help=f"${{{name}}} (default {default})")
    parser.add_argument("--validate", action="store_true", help="run nginx -t on the result")
    parser.add_argument("-o", "--output", default=None, help="output file (default stdout, or none with --validate)")
    args = parser.parse_args(argv)
    values = {name: getattr(args, name) for name in DEFAULTS if getattr(args, name) is not None}
    if args.validate:
        # nginx -t resolves upstream names: outside compose, "envoy" does not resolve.
        values.setdefault("COWATCH_NGINX_ENVOY", "127.0.0.1:8080")
    try:
        text = render(values)
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
        elif not args.validate:
            sys.stdout.write(text)
        if args.validate:
            with tempfile.TemporaryDirectory(prefix="cowatch-nginx-") as tmp:
                validate(write_config(Path(tmp), values), Path(tmp))
            print("nginx/nginx.conf: nginx -t ok", file=sys.stderr)
    except (ValueError, FileNotFoundError) as exc:
        print(f"nginx: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
