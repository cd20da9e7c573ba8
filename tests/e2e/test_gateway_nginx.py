"""The production request path with real processes: NGINX (nginx/nginx.conf) → Envoy (envoy/envoy.yaml) → two
replicas of each service → the test database. The booking walk-through three ways through NGINX (native gRPC on its
h2c port, gRPC-web and JSON on its HTTP/1.1 port); NGINX's own work: per-client rate limits (gRPC
RESOURCE_EXHAUSTED, HTTP 429 + Retry-After), body size limits (413), x-request-id, the JSON access log."""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cowatch.booking.v1 import resources_pb2 as booking_resources
from cowatch.booking.v1 import service_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import resources_pb2 as event_resources
from cowatch.event.v1 import service_pb2 as event_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.dev.processes import free_port
from tests.e2e.test_gateway_envoy import event_json, grpc_web_frame, http, parse_grpc_web, post_json
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER, Caller, new_caller
from tests.support.envoy import EnvoyProcess, ServiceProcess
from tests.support.factories import create_request
from tests.support.nginx import TLS_EXAMPLE, NginxProcess, render, validate, write_config
from tests.support.tools import require

SERVICES = {
    "event": ("services.event", "cowatch.event.v1.EventService"),
    "booking": ("services.booking", "cowatch.booking.v1.BookingService"),
    "review": ("services.review", "cowatch.review.v1.ReviewService"),
}
REPLICAS = 2
# The limited edge: 1 request a minute per client address after a burst of 2, so the third request on is refused
# for the rest of the test (all requests come from 127.0.0.1).
LIMITED = {"COWATCH_NGINX_RATE": "1r/m", "COWATCH_NGINX_BURST": "2"}
# The main edge: limits far above what the walk-through sends; a small body limit to test 413 cheaply.
GENEROUS = {"COWATCH_NGINX_RATE": "10000r/s", "COWATCH_NGINX_BURST": "10000", "COWATCH_NGINX_MAX_BODY": "64k"}


@dataclass
class Edge:
    nginx: NginxProcess
    limited: NginxProcess
    envoy: EnvoyProcess
    replicas: dict[str, list[ServiceProcess]]


@pytest.fixture(scope="module")
def edge(database_url: str) -> Iterator[Edge]:
    require("nginx", "the NGINX gateway tests")  # skips (one line: what to install) before anything starts
    env = {
        "COWATCH_DATABASE_URL": database_url,
        "COWATCH_JWT_ISSUER": ISSUER,
        "COWATCH_JWT_AUDIENCE": AUDIENCE,
        "COWATCH_JWT_HS256_SECRET": HS256_SECRET,
        "COWATCH_PUBLIC_BASE_URL": "https://cowatch.test",
        "COWATCH_SHUTDOWN_GRACE_SECONDS": "1",
        "COWATCH_DB_POOL_MIN_SIZE": "1",
        "COWATCH_DB_POOL_MAX_SIZE": "3",
    }
    with tempfile.TemporaryDirectory(prefix="cowatch-e2e-nginx-") as tmp:
        workdir = Path(tmp)
        replicas = {
            name: [ServiceProcess(f"{name}-{i}", module, health, env, workdir) for i in range(1, REPLICAS + 1)]
            for name, (module, health) in SERVICES.items()
        }
        processes = [p for group in replicas.values() for p in group]
        envoy = EnvoyProcess({name: [p.address for p in group] for name, group in replicas.items()}, workdir)
        (workdir / "main").mkdir()
        (workdir / "limited").mkdir()
        nginx = NginxProcess(("127.0.0.1", envoy.port), workdir / "main", GENEROUS)
        limited = NginxProcess(("127.0.0.1", envoy.port), workdir / "limited", LIMITED)
        try:
            for process in processes:
                process.start()
            envoy.start()
            nginx.start()
            limited.start()
            for process in processes:
                process.wait_serving()
            envoy.wait_healthy(dict.fromkeys(SERVICES, REPLICAS))
            yield Edge(nginx, limited, envoy, replicas)
        finally:
            for process in processes:
                process.stop(5)
            nginx.stop(5)
            limited.stop(5)
            envoy.stop(5)


def unique_city() -> str:
    return f"NGX-{uuid.uuid4().hex[:10]}"


def grpc_web(
    edge: Edge, service: str, method: str, request: bytes, caller: Caller | None = None
) -> tuple[list[bytes], dict[str, str]]:
    """A unary gRPC-web call over HTTP/1.1 through NGINX; (messages, trailers) after checking HTTP 200."""
    headers = {
        "content-type": "application/grpc-web+proto",
        "accept": "application/grpc-web+proto",
        "x-grpc-web": "1",
    }
    if caller is not None:
        headers["authorization"] = f"Bearer {caller.token}"
    status, response_headers, body = http(
        "POST", f"{edge.nginx.url}/{service}/{method}", grpc_web_frame(request), headers
    )
    assert status == 200, (status, body[:300])
    messages, trailers = parse_grpc_web(body)
    for key in ("grpc-status", "grpc-message"):
        if key in response_headers and key not in trailers:
            trailers[key] = response_headers[key]
    return messages, trailers


def bearer(caller: Caller) -> dict[str, str]:
    return {"authorization": f"Bearer {caller.token}"}


# ------------------------------------------------------------------------------------------------ walk-through


async def test_booking_walkthrough_over_native_grpc_through_nginx(edge: Edge) -> None:
    host, guest = new_caller("Nina Host"), new_caller("Gus Guest")
    city = unique_city()
    async with grpc.aio.insecure_channel(edge.nginx.grpc_target) as channel:
        events = event_grpc.EventServiceStub(channel)
        bookings = booking_grpc.BookingServiceStub(channel)
        event = await events.CreateEvent(create_request(datetime.now(UTC), city=city), metadata=host.metadata)

        call = bookings.CreateBooking(
            booking_pb2.CreateBookingRequest(booking=booking_resources.Booking(event=event.name, seats=2)),
            metadata=(*guest.metadata, ("x-request-id", "nginx-e2e-grpc-1")),
            timeout=10,
        )
        booking = await call
        # the client's request id went through NGINX and Envoy to the service, which returns it
        assert ("x-request-id", "nginx-e2e-grpc-1") in tuple(await call.initial_metadata())
        assert (booking.event, booking.guest, booking.seats) == (event.name, guest.resource, 2)
        assert booking.state == booking_resources.Booking.CONFIRMED

        got = await bookings.GetBooking(booking_pb2.GetBookingRequest(name=booking.name), metadata=guest.metadata)
        assert got.name == booking.name
        listed = await bookings.ListBookings(booking_pb2.ListBookingsRequest(), metadata=guest.metadata)
        assert [b.name for b in listed.bookings] == [booking.name]
        seats = (await events.GetEvent(event_pb2.GetEventRequest(name=event.name))).seats_taken
        assert seats == 2

        cancelled = await bookings.CancelBooking(
            booking_pb2.CancelBookingRequest(name=booking.name), metadata=guest.metadata
        )
        assert cancelled.state == booking_resources.Booking.CANCELLED
        assert (await events.GetEvent(event_pb2.GetEventRequest(name=event.name))).seats_taken == 0

        # service errors keep their code through both gateways
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bookings.GetBooking(
                booking_pb2.GetBookingRequest(name=f"bookings/{uuid.uuid4()}"), metadata=guest.metadata
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_booking_walkthrough_over_grpc_web_through_nginx(edge: Edge) -> None:
    host, guest = new_caller("Wanda Host"), new_caller("Walt Guest")
    event_svc, booking_svc = "cowatch.event.v1.EventService", "cowatch.booking.v1.BookingService"
    request = create_request(datetime.now(UTC), city=unique_city()).SerializeToString()
    messages, trailers = grpc_web(edge, event_svc, "CreateEvent", request, host)
    assert trailers.get("grpc-status") == "0", trailers
    event = event_resources.Event.FromString(messages[0])

    create = booking_pb2.CreateBookingRequest(booking=booking_resources.Booking(event=event.name, seats=1))
    messages, trailers = grpc_web(edge, booking_svc, "CreateBooking", create.SerializeToString(), guest)
    assert trailers.get("grpc-status") == "0", trailers
    booking = booking_resources.Booking.FromString(messages[0])
    assert (booking.event, booking.guest, booking.state) == (event.name, guest.resource, booking.CONFIRMED)

    get = booking_pb2.GetBookingRequest(name=booking.name).SerializeToString()
    messages, trailers = grpc_web(edge, booking_svc, "GetBooking", get, guest)
    assert booking_resources.Booking.FromString(messages[0]).name == booking.name

    cancel = booking_pb2.CancelBookingRequest(name=booking.name).SerializeToString()
    messages, trailers = grpc_web(edge, booking_svc, "CancelBooking", cancel, guest)
    assert booking_resources.Booking.FromString(messages[0]).state == booking.CANCELLED

    # an error arrives as a gRPC-web status
    messages, trailers = grpc_web(edge, booking_svc, "GetBooking", get)  # no token
    assert messages == []
    assert trailers["grpc-status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0])


def test_booking_walkthrough_over_json_through_nginx(edge: Edge) -> None:
    host, guest = new_caller("Jo Host"), new_caller("Jay Guest")
    base = edge.nginx.url
    status, _, body = post_json(f"{base}/v1/events", event_json(unique_city()), host)
    assert status == 200, body
    event = json.loads(body)

    status, _, body = post_json(f"{base}/v1/bookings", {"event": event["name"], "seats": 2}, guest)
    assert status == 200, body
    booking = json.loads(body)
    assert (booking["event"], booking["guest"], booking["seats"], booking["state"]) == (
        event["name"],
        guest.resource,
        2,
        "CONFIRMED",
    )

    status, _, body = http("GET", f"{base}/v1/{booking['name']}", headers=bearer(guest))
    assert status == 200, body
    assert json.loads(body)["name"] == booking["name"]
    status, _, body = http("GET", f"{base}/v1/bookings", headers=bearer(guest))
    assert [b["name"] for b in json.loads(body)["bookings"]] == [booking["name"]]
    status, _, body = http("GET", f"{base}/v1/{event['name']}")
    assert json.loads(body)["seatsTaken"] == 2

    status, _, body = post_json(f"{base}/v1/{booking['name']}:cancel", {}, guest)
    assert status == 200, body
    assert json.loads(body)["state"] == "CANCELLED"

    status, headers, body = http("GET", f"{base}/v1/bookings/{uuid.uuid4()}", headers=bearer(guest))
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] == 5


def test_a_calendar_poll_through_nginx_and_envoy_is_a_304(edge: Edge) -> None:
    """The production path keeps conditional GET: NGINX passes If-None-Match in, and the 304 Envoy's Lua filter
    makes out, with the weak ETag untouched (gzip only weakens strong ones)."""
    host = new_caller("Cal Poll")
    base = edge.nginx.url
    status, _, body = post_json(f"{base}/v1/events", event_json(unique_city()), host)
    assert status == 200, body
    status, _, body = post_json(f"{base}/v1/calendar:rotateToken", {}, host)
    feed = f"{base}/v1/calendar?token={json.loads(body)['token']}"
    status, headers, body = http("GET", feed, headers={"accept-encoding": "gzip"})
    assert status == 200 and headers["cache-control"] == "private, no-cache", (status, headers)
    etag = headers["etag"]
    assert etag.startswith('W/"')
    status, headers, body = http("GET", feed, headers={"if-none-match": etag, "accept-encoding": "gzip"})
    assert (status, body, headers["etag"]) == (304, b"", etag)


# ------------------------------------------------------------------------------------------------ NGINX's own work


def test_nginx_serves_the_web_page_for_share_links_with_caching_headers(edge: Edge) -> None:
    # A share link ({PUBLIC_BASE_URL}/events/{id}, with ?invite=... for a private event) gets the page.
    status, headers, body = http("GET", f"{edge.nginx.url}/events/{uuid.uuid4()}?invite=abc")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert headers["cache-control"] == "no-cache"  # a deploy shows at once
    assert b'id="main"' in body
    [script] = [
        p for p in (Path(__file__).resolve().parents[2] / "web" / "dist" / "assets").iterdir() if p.suffix == ".js"
    ]
    status, headers, body = http("GET", f"{edge.nginx.url}/assets/{script.name}", headers={"accept-encoding": "gzip"})
    assert status == 200
    assert "immutable" in headers["cache-control"] and "max-age=31536000" in headers["cache-control"]
    assert headers.get("content-encoding") == "gzip"
    assert headers["content-type"] == "application/javascript"  # module scripts need a JavaScript type
    assert http("GET", f"{edge.nginx.url}/assets/missing-0000.js")[0] == 404  # never index.html for an asset
    # The API next to it is untouched: JSON still reaches Envoy.
    status, headers, _ = http("GET", f"{edge.nginx.url}/v1/events?pageSize=1")
    assert status == 200 and headers["content-type"] == "application/json"


def test_healthz_through_nginx_reports_the_services(edge: Edge) -> None:
    status, _, _ = http("GET", f"{edge.nginx.url}/healthz")
    assert status == 200


async def test_rate_limit_gives_grpc_resource_exhausted_and_http_429_with_retry_after(edge: Edge) -> None:
    limited = edge.limited
    url = f"{limited.url}/v1/events?city={unique_city()}"
    statuses = [http("GET", url)[0] for _ in range(4)]
    assert statuses[:3] == [200, 200, 200], statuses  # the rate plus the burst of 2
    assert statuses[3] == 429, statuses

    status, headers, body = http("GET", url, headers={"x-request-id": "nginx-e2e-limited"})
    assert status == 429
    assert headers["retry-after"] == "1"
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] == "nginx-e2e-limited"
    assert json.loads(body)["code"] == 8  # RESOURCE_EXHAUSTED, as a JSON google.rpc.Status

    # the same client over native gRPC shares the budget and gets a gRPC status, not an HTTP error
    async with grpc.aio.insecure_channel(limited.grpc_target) as channel:
        stub = event_grpc.EventServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListEvents(event_pb2.ListEventsRequest(city=unique_city()), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit" in (caught.value.details() or "")

    # gRPC-web clients read the status from the headers
    status, headers, _ = http(
        "POST",
        f"{limited.url}/cowatch.event.v1.EventService/ListEvents",
        grpc_web_frame(event_pb2.ListEventsRequest().SerializeToString()),
        {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
    )
    assert (status, headers["grpc-status"]) == (429, "8")

    await asyncio.sleep(0.2)  # the access log line is written after the response
    refused = [e for e in limited.access_log() if e["status"] == 429 or e["grpc_status"] == "8"]
    assert refused and all(e["rate_limit"] == "REJECTED" for e in refused), refused
    # the main edge (another limit) was never throttled by all this
    assert http("GET", f"{edge.nginx.url}/v1/events?city={unique_city()}")[0] == 200


async def test_request_body_over_the_limit_is_refused_at_the_edge(edge: Edge) -> None:
    caller = new_caller()
    payload: dict[str, Any] = event_json(unique_city())
    payload["description"] = "x" * 100_000  # > 64k, the test rendering's limit
    status, headers, body = post_json(f"{edge.nginx.url}/v1/events", payload, caller)
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] == 3

    request = create_request(datetime.now(UTC), city=unique_city())
    request.event.description = "x" * 100_000
    async with grpc.aio.insecure_channel(edge.nginx.grpc_target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await event_grpc.EventServiceStub(channel).CreateEvent(request, metadata=caller.metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_request_id_is_set_when_absent_and_kept_when_present(edge: Edge) -> None:
    url = f"{edge.nginx.url}/v1/events?city={unique_city()}"
    _, headers, _ = http("GET", url, headers={"x-request-id": "nginx-e2e-kept-7"})
    assert headers["x-request-id"] == "nginx-e2e-kept-7"

    _, first, _ = http("GET", url)
    _, second, _ = http("GET", url)
    generated = first["x-request-id"], second["x-request-id"]
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in generated), generated  # NGINX's $request_id
    assert generated[0] != generated[1]

    # something that is not an id (spaces, too long) is replaced rather than passed on to the services' logs
    _, headers, _ = http("GET", url, headers={"x-request-id": "not an id " + "z" * 200})
    assert len(headers["x-request-id"]) == 32

    # native gRPC without an id: the service sees (and returns) the one NGINX made
    async with grpc.aio.insecure_channel(edge.nginx.grpc_target) as channel:
        call = event_grpc.EventServiceStub(channel).ListEvents(event_pb2.ListEventsRequest(city=unique_city()))
        await call
        grpc_rid = str(dict(await call.initial_metadata())["x-request-id"])
    assert len(grpc_rid) == 32

    await asyncio.sleep(0.2)
    log = {e["request_id"]: e for e in edge.nginx.access_log()}
    for rid in ("nginx-e2e-kept-7", *generated, grpc_rid):
        assert rid in log, f"{rid} not in the access log"
    kept = log["nginx-e2e-kept-7"]
    assert (kept["method"], kept["path"], kept["status"]) == ("GET", "/v1/events", 200)
    assert log[grpc_rid]["protocol"] == "HTTP/2.0"
    assert log[grpc_rid]["grpc_status"] == "0"
    assert "authorization" not in json.dumps(kept).lower()


# ------------------------------------------------------------------------------------------------ the config itself


def self_signed(directory: Path) -> None:
    """certs/tls.crt and certs/tls.key for localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "certs").mkdir()
    (directory / "certs" / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "certs" / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_config_is_valid_as_compose_renders_it_and_with_the_tls_example(tmp_path: Path) -> None:
    require("nginx", "nginx -t on the rendered config")
    values = {"COWATCH_NGINX_ENVOY": "127.0.0.1:8080"}  # nginx -t resolves names; "envoy" exists only in compose
    validate(write_config(tmp_path, values), tmp_path)

    # TLS: the example dropped into tls.d/ with certificates next to it
    (tmp_path / "tls.d").mkdir()
    tls = TLS_EXAMPLE.read_text(encoding="utf-8").replace("listen 8443", f"listen 127.0.0.1:{free_port()}")
    (tmp_path / "tls.d" / "tls.conf").write_text(tls, encoding="utf-8")
    self_signed(tmp_path)
    validate(write_config(tmp_path, values), tmp_path)

    with pytest.raises(ValueError, match="no placeholder"):
        render({"COWATCH_NGINX_TYPO": "1"})


# ------------------------------------------------------------------------------- abuse and NGINX's own errors


def raw_http(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the reply until NGINX closes or the body is complete."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def _json_error(status: int, headers: dict[str, str], body: bytes, code: int) -> dict[str, Any]:
    assert headers.get("content-type") == "application/json", (status, headers, body[:200])
    error: dict[str, Any] = json.loads(body)
    assert error["code"] == code, error
    assert "<html" not in body.decode(errors="replace").lower()
    return error


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"NOT A REQUEST\r\n\r\n", 400, 3),
        (b"GET /v1/events HTTP/1.1\r\nHost: x\r\nHost: y\r\nConnection: close\r\n\r\n", 400, 3),
        (b"GET /v1/events HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\nConnection: close\r\n\r\n", 431, 3),
        (b"GET /v1/events?q=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 414, 3),
    ],
    ids=["garbage", "duplicate-host", "headers-too-large", "uri-too-long"],
)
def test_nginx_own_errors_are_json_statuses(edge: Edge, request_bytes: bytes, status: int, code: int) -> None:
    got, headers, body = raw_http(edge.nginx.http_port, request_bytes)
    assert got == status, (got, body[:300])
    _json_error(got, headers, body, code)


def test_envoy_unreachable_is_a_json_503(tmp_path: Path) -> None:
    closed = free_port()
    nginx = NginxProcess(("127.0.0.1", closed), tmp_path, GENEROUS).start()
    try:
        status, headers, body = http("GET", f"{nginx.url}/v1/events")
        assert status == 503, body[:300]
        assert _json_error(status, headers, body, 14)["message"].startswith("gateway")
        assert headers.get("retry-after") == "1"
    finally:
        nginx.stop(5)


def test_ten_thousand_malformed_users_through_nginx_is_a_small_json_400(edge: Edge) -> None:
    host = new_caller()
    status, _, body = post_json(f"{edge.nginx.url}/v1/events", event_json(unique_city(), private=True), host)
    assert status == 200, body[:300]
    name = json.loads(body)["name"]
    payload = {"users": ["x"] * 10_000}
    status, headers, body = post_json(f"{edge.nginx.url}/v1/{name}:sendInvitations", payload, host)
    assert status == 400, body[:300]
    error = _json_error(status, headers, body, 3)
    violations = [v for d in error["details"] if d["@type"].endswith("BadRequest") for v in d["fieldViolations"]]
    assert 0 < len(violations) <= 20 and len(body) < 8192


def test_connections_per_client_are_limited_and_slow_bodies_are_cut_off(edge: Edge, tmp_path: Path) -> None:
    import socket
    import time

    values = {**GENEROUS, "COWATCH_NGINX_MAX_CONNS": "3", "COWATCH_NGINX_CLIENT_TIMEOUT": "1s"}
    nginx = NginxProcess(("127.0.0.1", edge.envoy.port), tmp_path, values).start()
    slow: list[socket.socket] = []
    try:
        # three clients send their headers, then trickle nothing of the promised body: each holds a connection
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", nginx.http_port), timeout=5)
            sock.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            slow.append(sock)
        time.sleep(0.2)
        status, headers, body = http("GET", f"{nginx.url}/v1/events?pageSize=1")
        assert status == 429, body[:300]
        _json_error(status, headers, body, 8)
        # the slow bodies are cut off after the client timeout, which frees the connections
        started = time.monotonic()
        for sock in slow:
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass
        assert time.monotonic() - started < 4
        status, _, body = http("GET", f"{nginx.url}/v1/events?pageSize=1")
        assert status == 200, body[:300]
    finally:
        for sock in slow:
            sock.close()
        nginx.stop(5)
