"""EventService through a real Envoy (envoy/envoy.yaml) in front of real service processes, three ways: native
gRPC, gRPC-web (hand-framed, over HTTP/1.1) and JSON (grpc_json_transcoder); plus CORS, request ids, Envoy's
own error replies, and one of two EventService replicas killed mid-traffic."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from http.client import HTTPConnection
from typing import Any

import grpc
import pytest
from cowatch.event.v1 import resources_pb2, service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from icalendar import Calendar

from tests.e2e.conftest import Gateway
from tests.support.api import Caller, expect_error, new_caller
from tests.support.factories import create_request, event_msg

EVENTS_PATH = "/cowatch.event.v1.EventService"
MISSING_EVENT = "events/00000000-0000-0000-0000-000000000000"


# ------------------------------------------------------------------------------------------------ helpers


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request; returns (status, lower-cased headers, body) for any status."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def post_json(url: str, payload: object, caller: Caller | None = None, raw: bytes | None = None) -> Any:
    headers = {"content-type": "application/json"}
    if caller is not None:
        headers["authorization"] = f"Bearer {caller.token}"
    body = raw if raw is not None else json.dumps(payload).encode()
    return http("POST", url, body, headers)


def event_json(city: str, **kwargs: Any) -> dict[str, Any]:
    """A valid event as the JSON a web client sends (proto3 JSON, lowerCamelCase)."""
    msg = event_msg(datetime.now(UTC), city=city, **kwargs)
    as_dict: dict[str, Any] = json_format.MessageToDict(msg)
    return as_dict


def unique_city() -> str:
    return f"E2E-{uuid.uuid4().hex[:10]}"


def error_info(status: dict[str, Any]) -> dict[str, Any]:
    infos = [d for d in status.get("details", []) if d.get("@type", "").endswith("google.rpc.ErrorInfo")]
    assert infos, f"no ErrorInfo in {status}"
    info: dict[str, Any] = infos[0]
    return info


def grpc_web_frame(message: bytes) -> bytes:
    """A gRPC-web data frame: flag 0, 4-byte big-endian length, the serialized message."""
    return struct.pack(">BI", 0, len(message)) + message


def parse_grpc_web(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """Split a gRPC-web response body into its messages and the trailers (the frame with flag 0x80)."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset < len(body):
        flag, length = struct.unpack(">BI", body[offset : offset + 5])
        payload = body[offset + 5 : offset + 5 + length]
        assert len(payload) == length, "truncated gRPC-web frame"
        offset += 5 + length
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


def grpc_web_call(
    gateway: Gateway, method: str, request: bytes, caller: Caller | None = None, origin: str | None = None
) -> tuple[int, dict[str, str], list[bytes], dict[str, str]]:
    headers = {
        "content-type": "application/grpc-web+proto",
        "accept": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "x-user-agent": "grpc-web-javascript/0.1",
    }
    if caller is not None:
        headers["authorization"] = f"Bearer {caller.token}"
    if origin is not None:
        headers["origin"] = origin
    status, response_headers, body = http(
        "POST", f"{gateway.url}{EVENTS_PATH}/{method}", grpc_web_frame(request), headers
    )
    messages, trailers = parse_grpc_web(body)
    # A trailers-only response carries the status in the HTTP headers instead of a trailer frame.
    for key in ("grpc-status", "grpc-message", "grpc-status-details-bin"):
        if key in response_headers and key not in trailers:
            trailers[key] = response_headers[key]
    return status, response_headers, messages, trailers


# ------------------------------------------------------------------------------------------------ native gRPC


async def test_native_grpc_through_envoy_creates_gets_and_lists(gateway: Gateway) -> None:
    host = new_caller("Gina Host")
    city = unique_city()
    async with grpc.aio.insecure_channel(gateway.envoy.target) as channel:
        stub = event_grpc.EventServiceStub(channel)
        call = stub.CreateEvent(
            create_request(datetime.now(UTC), city=city),
            metadata=(*host.metadata, ("x-request-id", "e2e-native-create-1")),
            timeout=10,
        )
        created = await call
        # the request id travels through Envoy to the service and back
        assert ("x-request-id", "e2e-native-create-1") in tuple(await call.initial_metadata())
        assert created.name.startswith("events/")
        assert created.host == host.resource
        assert created.host_display_name == "Gina Host"

        fetched = await stub.GetEvent(service_pb2.GetEventRequest(name=created.name), timeout=10)
        assert fetched.name == created.name
        assert fetched.place.city == city

        listed = await stub.ListEvents(service_pb2.ListEventsRequest(city=city), timeout=10)
        assert [e.name for e in listed.events] == [created.name]


async def test_native_grpc_errors_keep_their_details_through_envoy(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.envoy.target) as channel:
        stub = event_grpc.EventServiceStub(channel)
        missing = await expect_error(stub.GetEvent(service_pb2.GetEventRequest(name=MISSING_EVENT), timeout=10))
        assert missing.code == grpc.StatusCode.NOT_FOUND
        assert missing.reason == "EVENT_NOT_FOUND"

        bad = await expect_error(
            stub.CreateEvent(create_request(datetime.now(UTC), capacity=0), metadata=new_caller().metadata, timeout=10)
        )
        assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "event.capacity" in bad.fields


async def test_native_grpc_to_an_unknown_service_is_unimplemented(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(gateway.envoy.target) as channel:
        method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/cowatch.nothing.v1.NothingService/Do"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await method(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ------------------------------------------------------------------------------------------------ gRPC-web


def test_grpc_web_create_then_get(gateway: Gateway) -> None:
    host = new_caller("Wendy Web")
    city = unique_city()
    request = create_request(datetime.now(UTC), city=city).SerializeToString()
    status, headers, messages, trailers = grpc_web_call(gateway, "CreateEvent", request, host)
    assert status == 200
    assert headers["content-type"].startswith("application/grpc-web")
    assert trailers.get("grpc-status") == "0", trailers
    assert len(messages) == 1
    created = resources_pb2.Event.FromString(messages[0])
    assert created.host == host.resource
    assert created.place.city == city

    get = service_pb2.GetEventRequest(name=created.name).SerializeToString()
    status, _, messages, trailers = grpc_web_call(gateway, "GetEvent", get)
    assert (status, trailers.get("grpc-status")) == (200, "0")
    assert resources_pb2.Event.FromString(messages[0]).name == created.name


def test_grpc_web_error_carries_status_details(gateway: Gateway) -> None:
    request = service_pb2.GetEventRequest(name=MISSING_EVENT).SerializeToString()
    status, _, messages, trailers = grpc_web_call(gateway, "GetEvent", request)
    assert status == 200  # gRPC-web reports errors in grpc-status, not the HTTP status
    assert messages == []
    assert trailers["grpc-status"] == str(grpc.StatusCode.NOT_FOUND.value[0])
    details = trailers["grpc-status-details-bin"]
    rpc_status = status_pb2.Status.FromString(base64.b64decode(details + "=" * (-len(details) % 4)))
    info = error_details_pb2.ErrorInfo()
    assert rpc_status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("EVENT_NOT_FOUND", "cowatch.io")


def test_grpc_web_cors_for_an_allowed_origin_only(gateway: Gateway) -> None:
    preflight = {
        "origin": "http://localhost:5173",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-grpc-web,authorization,x-user-agent",
    }
    status, headers, _ = http("OPTIONS", f"{gateway.url}{EVENTS_PATH}/CreateEvent", headers=preflight)
    assert status == 200
    assert headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "x-grpc-web" in headers["access-control-allow-headers"]

    status, headers, _ = http(
        "OPTIONS", f"{gateway.url}/v1/events", headers={**preflight, "access-control-request-headers": "content-type"}
    )
    assert status == 200  # the JSON routes too
    assert headers["access-control-allow-origin"] == "http://localhost:5173"

    evil = {**preflight, "origin": "https://evil.example"}
    _, headers, _ = http("OPTIONS", f"{gateway.url}{EVENTS_PATH}/CreateEvent", headers=evil)
    assert "access-control-allow-origin" not in headers

    # the actual call exposes the gRPC status headers to the browser
    request = service_pb2.ListEventsRequest(city=unique_city()).SerializeToString()
    _, headers, _, trailers = grpc_web_call(gateway, "ListEvents", request, origin="http://localhost:5173")
    assert trailers["grpc-status"] == "0"
    assert headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "grpc-status" in headers["access-control-expose-headers"]


# ------------------------------------------------------------------------------------------------ JSON


def test_json_create_get_and_list(gateway: Gateway) -> None:
    host = new_caller("Jason Json")
    city = unique_city()
    status, headers, body = post_json(f"{gateway.url}/v1/events", event_json(city), host)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    created = json.loads(body)
    assert created["name"].startswith("events/")
    assert created["host"] == host.resource
    assert created["hostDisplayName"] == "Jason Json"
    assert created["state"] == "SCHEDULED"
    assert created["seatsTaken"] == 0  # primitive fields are always printed
    assert created["inviteToken"] == ""

    status, _, body = http("GET", f"{gateway.url}/v1/{created['name']}")
    assert status == 200, body
    assert json.loads(body)["name"] == created["name"]

    status, _, body = http("GET", f"{gateway.url}/v1/events?city={city}&pageSize=10")
    assert status == 200, body
    listed = json.loads(body)
    assert [e["name"] for e in listed["events"]] == [created["name"]]
    assert listed["nextPageToken"] == ""


def test_an_events_ics_download_passes_envoys_transcoder_as_text_calendar(gateway: Gateway) -> None:
    host = new_caller("Ida Ics")
    status, _, body = post_json(f"{gateway.url}/v1/events", event_json(unique_city()), host)
    assert status == 200, body
    name = json.loads(body)["name"]
    status, headers, body = http("GET", f"{gateway.url}/v1/{name}:exportCalendar")  # anonymous: a public event
    assert status == 200, body
    assert headers["content-type"] == "text/calendar; charset=utf-8"
    (vevent,) = Calendar.from_ical(body).walk("VEVENT")
    assert str(vevent["uid"]) == f"{name.split('/')[1]}@cowatch"
    assert str(vevent["url"]).endswith(f"/{name}")
    status, _, body = http("GET", f"{gateway.url}/v1/events/{uuid.uuid4()}:exportCalendar")
    assert (status, error_info(json.loads(body))["reason"]) == (404, "EVENT_NOT_FOUND")


def test_a_calendar_feed_through_envoy_and_its_token_in_no_log(gateway: Gateway) -> None:
    host = new_caller("Cal Feed")
    status, _, body = post_json(f"{gateway.url}/v1/events", event_json(unique_city()), host)
    assert status == 200, body
    event_id = json.loads(body)["name"].split("/")[1]
    status, _, body = post_json(f"{gateway.url}/v1/calendar:rotateToken", {}, host)
    assert status == 200, body
    rotated = json.loads(body)
    token = rotated["token"]
    assert rotated["feedUrl"] == f"https://cowatch.test/v1/calendar?token={token}"
    status, headers, body = http("GET", f"{gateway.url}/v1/calendar?token={token}")  # no bearer token
    assert status == 200, body
    assert headers["content-type"] == "text/calendar; charset=utf-8"
    assert [str(v["uid"]) for v in Calendar.from_ical(body).walk("VEVENT")] == [f"{event_id}@cowatch"]
    status, _, body = http("GET", f"{gateway.url}/v1/calendar?token=never-issued")
    assert (status, error_info(json.loads(body))["reason"]) == (404, "CALENDAR_NOT_FOUND")
    # Envoy logged both requests (paths without their query), and no process logged the token.
    deadline = time.monotonic() + 10
    while gateway.envoy.log_path.read_text(errors="replace").count("/v1/calendar") < 2:
        assert time.monotonic() < deadline, gateway.diagnostics()
        time.sleep(0.1)
    for process in (gateway.envoy, *gateway.event_replicas):
        assert token not in process.log_path.read_text(errors="replace"), process.name


def raw_get(gateway: Gateway, path: str, requests: list[dict[str, str]]) -> list[tuple[int, dict[str, str], bytes]]:
    """GETs of ``path`` one after another on ONE HTTP/1.1 connection (a 304 must leave it usable)."""
    host, _, port = gateway.url.removeprefix("http://").partition(":")
    conn = HTTPConnection(host, int(port), timeout=10)
    try:
        answers = []
        for headers in requests:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            answers.append((response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()))
        return answers
    finally:
        conn.close()


def test_a_calendar_poll_of_an_unchanged_feed_is_a_304_without_a_body(gateway: Gateway) -> None:
    """Conditional GET through the transcoder and the Lua filter: ETag and Cache-Control on every answer; a
    matching If-None-Match is a real 304 (no body, no content type, no marker); any change is a 200 again."""
    host = new_caller("Poll Ing")
    status, _, body = post_json(f"{gateway.url}/v1/events", event_json(unique_city()), host)
    assert status == 200, body
    name = json.loads(body)["name"]
    status, _, body = post_json(f"{gateway.url}/v1/calendar:rotateToken", {}, host)
    token = json.loads(body)["token"]
    feed = f"/v1/calendar?token={token}"

    (first,) = raw_get(gateway, feed, [{}])
    assert first[0] == 200, first
    etag = first[1]["etag"]
    assert etag.startswith('W/"') and etag.endswith('"')  # weak: DTSTAMP differs between renderings
    assert first[1]["cache-control"] == "private, no-cache"
    not_modified, again, other, star = raw_get(
        gateway,
        feed,
        [{"if-none-match": etag}, {"if-none-match": etag.removeprefix("W/")}, {"if-none-match": 'W/"x"'}, {}],
    )
    assert not_modified[0] == 304, not_modified
    assert not_modified[2] == b""
    assert not_modified[1]["etag"] == etag and not_modified[1]["cache-control"] == "private, no-cache"
    assert "content-type" not in not_modified[1] and "x-cowatch-not-modified" not in not_modified[1]
    assert again[0] == 304  # If-None-Match compares weakly
    assert other[0] == 200 and Calendar.from_ical(other[2]).walk("VEVENT")
    assert star[0] == 200 and star[1]["etag"] == etag  # nothing changed: the same validator

    # The host cancels: the old ETag no longer matches and the feed says so.
    status, _, body = post_json(f"{gateway.url}/v1/{name}:cancel", {}, host)
    assert status == 200, body
    (changed,) = raw_get(gateway, feed, [{"if-none-match": etag}])
    assert changed[0] == 200 and changed[1]["etag"] != etag
    (vevent,) = Calendar.from_ical(changed[2]).walk("VEVENT")
    assert str(vevent["status"]) == "CANCELLED"

    # The one-event download has its own validator.
    (ics,) = raw_get(gateway, f"/v1/{name}:exportCalendar", [{}])
    assert ics[0] == 200 and ics[1]["etag"].startswith('W/"')
    (ics_again,) = raw_get(gateway, f"/v1/{name}:exportCalendar", [{"if-none-match": ics[1]["etag"]}])
    assert (ics_again[0], ics_again[2]) == (304, b"")
    # Native gRPC callers see the same answer before Envoy's conversion: an empty body and the marker.
    with grpc.insecure_channel(gateway.url.removeprefix("http://")) as channel:
        stub = event_grpc.EventServiceStub(channel)
        body, call = stub.GetCalendar.with_call(
            service_pb2.GetCalendarRequest(token=token), metadata=(("if-none-match", changed[1]["etag"]),)
        )
        headers = dict(call.initial_metadata())
        assert body.data == b"" and headers["x-cowatch-not-modified"] == "1"
        assert headers["etag"] == changed[1]["etag"]


def test_json_malformed_body_is_400_naming_the_problem(gateway: Gateway) -> None:
    caller = new_caller()
    status, headers, body = post_json(f"{gateway.url}/v1/events", None, caller, raw=b'{"title": "x", ')
    assert status == 400
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["code"] == 3  # INVALID_ARGUMENT, same shape as the services' errors
    assert "Unexpected end of string" in error["message"]

    payload = event_json(unique_city())
    payload["capacity"] = "many"
    status, _, body = post_json(f"{gateway.url}/v1/events", payload, caller)
    assert status == 400
    error = json.loads(body)
    assert "event.capacity" in error["message"]
    assert "TYPE_INT32" in error["message"]


def test_json_invalid_event_is_400_with_field_violations(gateway: Gateway) -> None:
    payload = event_json(unique_city(), capacity=0)
    payload["capacity"] = 0
    status, _, body = post_json(f"{gateway.url}/v1/events", payload, new_caller())
    assert status == 400
    error = json.loads(body)
    assert error["code"] == 3
    assert error_info(error)["reason"] == "INVALID_ARGUMENT"
    violations = [
        v for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest") for v in d["fieldViolations"]
    ]
    assert "event.capacity" in {v["field"] for v in violations}


def test_json_unknown_event_is_404_with_error_info(gateway: Gateway) -> None:
    status, headers, body = http("GET", f"{gateway.url}/v1/{MISSING_EVENT}")
    assert status == 404
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["code"] == 5
    info = error_info(error)
    assert (info["reason"], info["domain"]) == ("EVENT_NOT_FOUND", "cowatch.io")


def test_json_delete_review_is_routed_and_an_unknown_review_is_404(gateway: Gateway) -> None:
    url = f"{gateway.url}/v1/reviews/{uuid.uuid4()}"
    status, _, body = http("DELETE", url, headers={"authorization": f"Bearer {new_caller().token}"})
    assert status == 404
    assert error_info(json.loads(body))["reason"] == "REVIEW_NOT_FOUND"
    status, _, body = http("DELETE", url)
    assert (status, error_info(json.loads(body))["reason"]) == (401, "TOKEN_MISSING")


def test_json_without_token_is_401(gateway: Gateway) -> None:
    status, _, body = post_json(f"{gateway.url}/v1/events", event_json(unique_city()))
    assert status == 401
    assert error_info(json.loads(body))["reason"] == "TOKEN_MISSING"


def test_json_unknown_query_parameter_and_route_are_rejected(gateway: Gateway) -> None:
    status, _, body = http("GET", f"{gateway.url}/v1/events?cty=Berlin")
    assert status == 400
    error = json.loads(body)
    assert error["code"] == 3
    assert '"cty"' in error["message"]

    status, _, body = http("GET", f"{gateway.url}/v1/nothing/here")
    assert status == 404
    assert json.loads(body)["code"] == 5

    status, _, body = http("DELETE", f"{gateway.url}/v1/events")  # no DELETE binding
    assert status == 404


def test_request_id_is_preserved_or_generated(gateway: Gateway) -> None:
    url = f"{gateway.url}/v1/events?city={unique_city()}"
    _, headers, _ = http("GET", url, headers={"x-request-id": "e2e-json-42"})
    assert headers["x-request-id"] == "e2e-json-42"
    _, first, _ = http("GET", url)
    _, second, _ = http("GET", url)
    assert first["x-request-id"] and second["x-request-id"]
    assert first["x-request-id"] != second["x-request-id"]


def test_healthz_reports_healthy_clusters(gateway: Gateway) -> None:
    status, _, _ = http("GET", f"{gateway.url}/healthz")
    assert status == 200


# ------------------------------------------------------------------------------------------------ replicas
# Last in the module: it leaves one EventService replica dead.


def lost_in_flight(exc: grpc.aio.AioRpcError) -> bool:
    """The replica died after it had begun its response: Envoy can no longer retry (it forwards response headers
    as they come, and the services send theirs when a call starts), the client sees the stream reset."""
    details = exc.details() or ""
    return exc.code() == grpc.StatusCode.UNAVAILABLE or (
        exc.code() == grpc.StatusCode.INTERNAL and "RST_STREAM" in details
    )


async def test_killing_one_of_two_event_replicas_mid_traffic_keeps_idempotent_calls_working(
    gateway: Gateway,
) -> None:
    """Envoy retries every idempotent call the dead replica had not begun to answer (refused connections, resets
    before a response) on the other replica; only the few calls in flight at the moment of the kill, at most one
    per client, need the client's own retry (README, "Degradation": "idempotent retries succeed")."""
    host = new_caller()
    city = unique_city()
    victim, survivor = gateway.event_replicas
    victim_address = f"127.0.0.1:{victim.port}"
    concurrency = 8
    async with grpc.aio.insecure_channel(gateway.envoy.target) as channel:
        stub = event_grpc.EventServiceStub(channel)
        created = await stub.CreateEvent(create_request(datetime.now(UTC), city=city), metadata=host.metadata)
        # Envoy's workers take up a replica about a second after Envoy reports it healthy: call (over this
        # channel and over fresh HTTP connections, which may land on other Envoy workers) until a round of calls
        # is spread over both replicas, so the kill below takes away half of the capacity everywhere.
        deadline = time.monotonic() + 15
        while True:
            before = gateway.envoy.host_requests("event")
            for _ in range(10):
                await stub.GetEvent(service_pb2.GetEventRequest(name=created.name), timeout=5)
                await asyncio.to_thread(http, "GET", f"{gateway.url}/v1/{created.name}")
            after = gateway.envoy.host_requests("event")
            spread = {address: after[address] - before.get(address, 0) for address in after}
            if min(spread.values()) >= 6:
                break
            assert time.monotonic() < deadline, f"calls never spread over both replicas: {spread}"

        stop = threading.Event()
        ok: list[str] = []
        client_retries: list[str] = []
        failures: list[str] = []

        async def idempotent(call: Any) -> None:
            for attempt in (1, 2):
                try:
                    await call()
                    return
                except grpc.aio.AioRpcError as exc:
                    if attempt == 1 and lost_in_flight(exc):
                        client_retries.append(f"gRPC {exc.code().name}: {exc.details()}")
                        continue
                    failures.append(f"gRPC {exc.code().name}: {exc.details()}")
                    return

        async def grpc_client() -> None:
            while not stop.is_set():
                await idempotent(lambda: stub.GetEvent(service_pb2.GetEventRequest(name=created.name), timeout=5))
                await idempotent(lambda: stub.ListEvents(service_pb2.ListEventsRequest(city=city), timeout=5))
                ok.append("grpc")

        def json_client() -> None:
            while not stop.is_set():
                for attempt in (1, 2):
                    status, _, body = http("GET", f"{gateway.url}/v1/{created.name}")
                    if status == 200:
                        ok.append("json")
                        break
                    if attempt == 1 and status == 503:
                        client_retries.append(f"JSON {status}: {body[:200]!r}")
                        continue
                    failures.append(f"JSON {status}: {body[:200]!r}")
                    break

        clients = [asyncio.create_task(grpc_client()) for _ in range(concurrency - 2)]
        clients += [asyncio.create_task(asyncio.to_thread(json_client)) for _ in range(2)]
        await asyncio.sleep(0.5)
        before_kill = len(ok)
        victim.kill()
        await asyncio.sleep(2.5)
        stop.set()
        await asyncio.gather(*clients)

    gateway_retries = gateway.envoy.counter("cluster.event.upstream_rq_retry")
    summary = f"gateway retries {gateway_retries}, client retries {client_retries}"
    if failures:
        odd = [line for line in gateway.envoy.log_tail(100000).splitlines() if "flags=-" not in line]
        summary += "\nEnvoy access log, calls with response flags:\n" + "\n".join(odd[-15:])

    assert not failures, f"{len(failures)} idempotent calls failed ({summary}): {failures[:5]}"
    assert len(client_retries) <= concurrency, summary  # only what was in flight on the victim
    assert before_kill > 0
    assert len(ok) - before_kill > 20, f"too few calls after the kill: {len(ok) - before_kill}"
    # Envoy has taken the dead replica out of rotation (health checks / outlier detection)
    deadline = time.monotonic() + 5
    while victim_address in gateway.envoy.healthy_hosts().get("event", set()):
        assert time.monotonic() < deadline, "Envoy still considers the killed replica healthy"
        await asyncio.sleep(0.1)
    assert f"127.0.0.1:{survivor.port}" in gateway.envoy.healthy_hosts()["event"]


def test_json_waitlist_join_offer_and_claim(gateway: Gateway) -> None:
    """The README's waitlist walk-through, over Envoy's JSON routes."""
    host, guest, alice = new_caller("Host"), new_caller("Guest"), new_caller("Alice")
    status, _, body = post_json(f"{gateway.url}/v1/events", event_json(unique_city(), capacity=2), host)
    assert status == 200, body
    event = json.loads(body)["name"]
    status, _, body = post_json(f"{gateway.url}/v1/bookings", {"event": event, "seats": 2}, guest)
    assert status == 200, body
    booking = json.loads(body)["name"]
    status, _, body = post_json(f"{gateway.url}/v1/{event}/waitlistEntries", {"seats": 2}, alice)
    assert status == 200, body
    entry = json.loads(body)
    assert (entry["state"], entry["position"]) == ("WAITING", 1)
    shown = json.loads(http("GET", f"{gateway.url}/v1/{event}")[2])
    assert (shown["seatsAvailable"], shown["waitlistSize"]) == (0, 1)
    status, _, body = post_json(f"{gateway.url}/v1/{booking}:cancel", {}, guest)
    assert status == 200, body
    auth = {"authorization": f"Bearer {alice.token}"}
    offered = json.loads(http("GET", f"{gateway.url}/v1/{entry['name']}", headers=auth)[2])
    assert offered["state"] == "OFFERED" and offered["offerExpireTime"]
    hosted = {"authorization": f"Bearer {host.token}"}
    listed = json.loads(http("GET", f"{gateway.url}/v1/{event}/waitlistEntries", headers=hosted)[2])
    assert [e["name"] for e in listed["waitlistEntries"]] == [entry["name"]]
    status, _, body = post_json(f"{gateway.url}/v1/{entry['name']}:claim", {}, alice)
    assert status == 200, body
    claimed = json.loads(body)
    assert (claimed["state"], claimed["seats"], claimed["guest"]) == ("CONFIRMED", 2, alice.resource)


# ------------------------------------------------------------------------------------------------ bad input


def _violations(error: dict[str, Any]) -> list[dict[str, str]]:
    return [v for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest") for v in d["fieldViolations"]]


def _private_event_json(gateway: Gateway, host: Caller, **kwargs: Any) -> dict[str, Any]:
    payload = event_json(unique_city(), private=True, **kwargs)
    status, _, body = post_json(f"{gateway.url}/v1/events", payload, host)
    assert status == 200, body[:300]
    created: dict[str, Any] = json.loads(body)
    return created


def test_json_mangled_invite_token_in_a_share_link_is_400_not_500(gateway: Gateway) -> None:
    event = _private_event_json(gateway, new_caller())
    status, headers, body = http("GET", f"{gateway.url}/v1/{event['name']}?inviteToken=%C3%A4")
    assert status == 400, body[:300]
    assert headers["content-type"] == "application/json"
    assert "invite_token" in {v["field"] for v in _violations(json.loads(body))}


def test_json_ten_thousand_malformed_users_is_a_small_400(gateway: Gateway) -> None:
    host = new_caller()
    event = _private_event_json(gateway, host)
    payload = {"users": [f"nobody-{i}" for i in range(10_000)]}
    status, _, body = post_json(f"{gateway.url}/v1/{event['name']}:sendInvitations", payload, host)
    assert status == 400, body[:300]
    error = json.loads(body)
    assert error["code"] == 3
    assert 0 < len(_violations(error)) <= 20
    assert int(error_info(error)["metadata"]["omitted_violations"]) >= 10_000 - 20
    assert len(body) < 8192


def test_json_sold_out_is_400_failed_precondition_not_429(gateway: Gateway) -> None:
    host, first, second = new_caller(), new_caller(), new_caller()
    status, _, body = post_json(f"{gateway.url}/v1/events", event_json(unique_city(), capacity=1), host)
    assert status == 200, body[:300]
    name = json.loads(body)["name"]
    status, _, body = post_json(f"{gateway.url}/v1/bookings", {"event": name}, first)
    assert status == 200, body[:300]
    status, _, body = post_json(f"{gateway.url}/v1/bookings", {"event": name}, second)
    assert status == 400, body[:300]
    error = json.loads(body)
    assert error["code"] == 9  # FAILED_PRECONDITION: no client or proxy retries it
    assert error_info(error)["reason"] == "EVENT_SOLD_OUT"
