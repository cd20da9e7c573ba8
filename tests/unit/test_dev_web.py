"""make run's web page server (services/dev/web.py): the bundle with its caching headers, share-link paths, dev
sign-in tokens the services accept, and the CORS origins setting."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.auth import TokenVerifier
from services.dev.token import DEV_AUDIENCE, DEV_HS256_SECRET, DEV_ISSUER
from services.dev.web import DEFAULT_CORS_ORIGINS, cors_origins, make_server

INDEX = b"<!doctype html><main id=main></main>"
SCRIPT = b"console.log('cowatch')"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_bytes(INDEX)
    (dist / "assets" / "index-abc123.js").write_bytes(SCRIPT)
    (tmp_path / "secret.txt").write_text("outside the bundle")
    server = make_server(0, dist=dist, environ={})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def get(url: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def test_share_links_and_other_pages_get_index_html_revalidated_every_time(site: str) -> None:
    for path in ("/", "/events/3f1c0f4e-0000-4000-8000-000000000000?invite=tok", "/hosts/dev-user", "/new"):
        status, headers, body = get(site + path)
        assert (status, body) == (200, INDEX), path
        assert headers["cache-control"] == "no-cache"
        assert headers["content-type"].startswith("text/html")


def test_hashed_assets_are_immutable_and_missing_files_are_404_not_the_page(site: str) -> None:
    status, headers, body = get(f"{site}/assets/index-abc123.js")
    assert (status, body) == (200, SCRIPT)
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert headers["content-type"].split(";")[0] in {"text/javascript", "application/javascript"}
    assert get(f"{site}/assets/index-gone.js")[0] == 404
    assert get(f"{site}/favicon.ico")[0] == 404


def test_nothing_outside_the_bundle_is_served(site: str) -> None:
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/../../secret.txt"):
        _, _, body = get(site + path)
        assert b"outside the bundle" not in body, path


def test_dev_sign_in_mints_tokens_the_services_accept(site: str) -> None:
    status, _, body = get(f"{site}/dev/users")
    assert status == 200
    users = {u["role"]: u for u in json.loads(body)["users"]}
    assert set(users) == {"host", "guest"}

    verifier = TokenVerifier(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, hs256_secret=DEV_HS256_SECRET)
    status, _, body = get(f"{site}/dev/token", json.dumps({"sub": users["guest"]["id"]}).encode())
    assert status == 200
    guest = verifier.verify(json.loads(body)["token"])
    assert (guest.id, guest.display_name) == (users["guest"]["id"], users["guest"]["name"])

    fresh = [json.loads(get(f"{site}/dev/token", b'{"new": true}')[2]) for _ in range(2)]
    ids = {verifier.verify(f["token"]).id for f in fresh}
    assert len(ids) == 2 and all(i.startswith("user-") for i in ids)

    assert get(f"{site}/dev/token", b"{}")[0] == 400
    assert get(f"{site}/dev/token", b"not json")[0] == 400


def test_cors_origins_setting() -> None:
    assert cors_origins({}) == list(DEFAULT_CORS_ORIGINS)
    assert any(o.endswith(":5173") for o in DEFAULT_CORS_ORIGINS)  # the Vite dev server works out of the box
    value = "https://cowatch.example, http://localhost:3000/"
    assert cors_origins({"COWATCH_CORS_ORIGINS": value}) == ["https://cowatch.example", "http://localhost:3000"]
    with pytest.raises(ValueError, match="COWATCH_CORS_ORIGINS"):
        cors_origins({"COWATCH_CORS_ORIGINS": "cowatch.example"})
    with pytest.raises(ValueError, match="COWATCH_CORS_ORIGINS"):
        cors_origins({"COWATCH_CORS_ORIGINS": "https://cowatch.example/app"})
