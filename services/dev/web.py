"""The web page in ``make run``: a small static file server for ``web/dist`` behind Envoy, plus dev sign-in.

Envoy (``envoy/envoy.yaml``, the ``web`` cluster) sends every request that is not an API call here, so the page,
its share links (``/events/{id}``, ``?invite=…`` for private events) and the API share one origin.

- ``/assets/*``: the bundle's content-hashed files, ``Cache-Control: immutable``.
- Any other path without a file behind it: ``index.html`` (``no-cache``); the page routes on the client.
- ``GET /dev/users`` and ``POST /dev/token``: **development only** — dev users and tokens signed with the dev
  secret (:mod:`services.dev.token`), for the page's sign-in panel. Only this server, which only ``make run``
  starts, answers them; in production (NGINX serving ``web/dist``) they don't exist and the page hides the panel.
  Anyone who can reach the port can mint a token — harmless, since the dev secret is in the repository anyway.

The standard library's ``http.server`` is enough for one developer's browser; production serves the same files
from NGINX (``nginx/nginx.conf``).

    .venv/bin/python -m services.dev.web --port 8090      # normally started by `make run`
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

from services.common.settings import ENV_PREFIX
from services.dev.token import DEV_USER, GUEST_USER, DevTokenError, issue_dev_token

__all__ = [
    "CORS_ORIGINS_ENV",
    "DEFAULT_CORS_ORIGINS",
    "DEV_USERS",
    "WEB_DIST",
    "WebHandler",
    "cors_origins",
    "main",
    "make_server",
]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
WEB_DIST: Final = REPO_ROOT / "web" / "dist"
CORS_ORIGINS_ENV: Final = f"{ENV_PREFIX}CORS_ORIGINS"
# The Vite dev server (`npm run dev` in web/), so the page under development can call the API out of the box.
DEFAULT_CORS_ORIGINS: Final = ("http://localhost:5173", "http://127.0.0.1:5173")
DEV_USERS: Final = (
    {"id": DEV_USER[0], "name": DEV_USER[1], "role": "host"},
    {"id": GUEST_USER[0], "name": GUEST_USER[1], "role": "guest"},
)
IMMUTABLE: Final = "public, max-age=31536000, immutable"
MAX_BODY: Final = 4096


def cors_origins(environ: Mapping[str, str] | None = None) -> list[str]:
    """Browser origins Envoy allows: ``COWATCH_CORS_ORIGINS`` (comma-separated), else the Vite dev server's."""
    env = os.environ if environ is None else environ
    value = env.get(CORS_ORIGINS_ENV, "")
    origins = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
    for origin in origins:
        if not origin.startswith(("http://", "https://")) or "/" in origin.split("://", 1)[1]:
            raise ValueError(f"{CORS_ORIGINS_ENV}: {origin!r} is not an origin like https://example.com[:port]")
    return origins or list(DEFAULT_CORS_ORIGINS)


class WebHandler(BaseHTTPRequestHandler):
    """Serves ``server.dist`` (``index.html`` for unknown paths) and the dev sign-in endpoints."""

    server: WebServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return  # Envoy's access log already has every request

    # ----------------------------------------------------------------------------------------------- GET

    def do_GET(self) -> None:
        self._get(head=False)

    def do_HEAD(self) -> None:
        self._get(head=True)

    def _get(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/dev/users":
            self._json(HTTPStatus.OK, {"users": list(DEV_USERS)}, head=head)
            return
        file = self._resolve(path)
        if file is not None:
            cache = IMMUTABLE if path.startswith("/assets/") else "no-cache"
            self._file(file, cache, head=head)
        elif path.startswith("/assets/") or path.rsplit("/", 1)[-1].count("."):
            self._text(HTTPStatus.NOT_FOUND, "not found\n", head=head)  # a missing file, not a page
        else:
            self._file(self.server.dist / "index.html", "no-cache", head=head)

    def _resolve(self, path: str) -> Path | None:
        if path in ("", "/"):
            return None
        root = self.server.dist.resolve()
        candidate = (root / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
        return candidate

    # ----------------------------------------------------------------------------------------------- POST

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/dev/token":
            self._text(HTTPStatus.NOT_FOUND, "not found\n")
            return
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "body too large"})
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"invalid JSON: {exc}"})
            return
        if body.get("new"):
            suffix = secrets.token_hex(3)
            subject, name = f"user-{suffix}", f"New User {suffix}"
        else:
            subject, name = str(body.get("sub") or ""), str(body.get("name") or "")
            known = {u["id"]: u["name"] for u in DEV_USERS}
            if not subject:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "sub: required (or new: true)"})
                return
            name = name or known.get(subject, subject)
        try:
            token = issue_dev_token(subject, name, environ=self.server.environ)
        except DevTokenError as exc:
            self._json(HTTPStatus.CONFLICT, {"error": str(exc)})
            return
        self._json(HTTPStatus.OK, {"token": token, "user": {"id": subject, "name": name}})

    # ----------------------------------------------------------------------------------------------- replies

    def _send(self, status: HTTPStatus, content_type: str, body: bytes, cache: str, *, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", cache)
        self.send_header("x-content-type-options", "nosniff")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _file(self, file: Path, cache: str, *, head: bool) -> None:
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type == "application/javascript":
            content_type += "; charset=utf-8"
        self._send(HTTPStatus.OK, content_type, file.read_bytes(), cache, head=head)

    def _json(self, status: HTTPStatus, payload: object, *, head: bool = False) -> None:
        body = json.dumps(payload).encode()
        self._send(status, "application/json", body, "no-store", head=head)

    def _text(self, status: HTTPStatus, text: str, *, head: bool = False) -> None:
        self._send(status, "text/plain; charset=utf-8", text.encode(), "no-store", head=head)


class WebServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dist: Path, environ: Mapping[str, str]) -> None:
        super().__init__(address, WebHandler)
        self.dist = dist
        self.environ = dict(environ)


def make_server(
    port: int, *, host: str = "127.0.0.1", dist: Path = WEB_DIST, environ: Mapping[str, str] | None = None
) -> WebServer:
    """A server for ``dist`` on ``host:port`` (0: any free port); dev tokens follow ``environ``'s JWT settings."""
    if not (dist / "index.html").is_file():
        raise FileNotFoundError(f"{dist}/index.html is missing: run `make gen` (needs Node) or restore web/dist")
    return WebServer((host, port), dist, os.environ if environ is None else environ)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve web/dist and dev sign-in (make run's web page).")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dist", type=Path, default=WEB_DIST)
    args = parser.parse_args(argv)
    try:
        server = make_server(args.port, host=args.host, dist=args.dist)
    except (FileNotFoundError, OSError) as exc:
        print(f"services.dev.web: {exc}", file=sys.stderr)
        return 1
    print(f"serving {args.dist} on http://{args.host}:{server.server_address[1]} (dev sign-in at /dev/token)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
