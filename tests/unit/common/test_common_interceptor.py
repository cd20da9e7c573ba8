"""The interceptor through a real in-process grpc.aio server (loopback, port 0, no generated code)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio

from services.common import context
from services.common.auth import TokenVerifier
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.grpc_errors import parse_error_details
from services.common.interceptors import RpcInterceptor
from services.common.logging import configure_logging

SERVICE = "cowatch.test.v1.Probe"
PUBLIC = f"/{SERVICE}/Public"
PRIVATE = f"/{SERVICE}/Private"


def identity(data: bytes) -> bytes:
    return data


async def public(request: bytes, ctx: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    user = context.current_user()
    return json.dumps({"user": user.id if user else None, "request_id": context.request_id()}).encode()


async def private(request: bytes, ctx: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    user = context.require_user()
    return json.dumps({"user": user.id, "name": user.display_name}).encode()


async def fail(request: bytes, ctx: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    if request == b"not-found":
        raise NotFound("EVENT_NOT_FOUND", "event events/42 does not exist", metadata={"name": "events/42"})
    if request == b"invalid":
        raise InvalidArgument(
            "INVALID_ARGUMENT",
            "2 invalid fields",
            field_violations=[("event.title", "required"), ("event.capacity", "must be positive")],
        )
    if request == b"db-down":
        raise ConnectionRefusedError(111, "Connection refused")
    if request == b"abort":
        await ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "handler aborted itself")
    raise RuntimeError("secret internals: password=hunter2")


async def slow(request: bytes, ctx: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    await asyncio.sleep(10)
    return b"too late"


class RecordingObserver:
    """The metrics hook: records every finished RPC and wakes up waiters."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, grpc.StatusCode, float]] = []
        self.changed = asyncio.Condition()

    def rpc_finished(self, method: str, code: grpc.StatusCode, duration_seconds: float) -> None:
        self.finished.append((method, code, duration_seconds))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, method: str) -> grpc.StatusCode:
        async with asyncio.timeout(5), self.changed:
            await self.changed.wait_for(lambda: any(m == method for m, _, _ in self.finished))
        return next(code for m, code, _ in self.finished if m == method)


async def stream(request: bytes, ctx: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
    for i in range(3):
        if request == b"fail" and i == 1:
            raise FailedPrecondition("STREAM_BROKE", "stream broke after one item")
        yield f"{i}:{context.request_id()}".encode()


async def stream_writer(request: bytes, ctx: grpc.aio.ServicerContext[bytes, bytes]) -> None:
    user = context.require_user()
    await ctx.write(user.id.encode())


def handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Public": grpc.unary_unary_rpc_method_handler(public, identity, identity),
            "Private": grpc.unary_unary_rpc_method_handler(private, identity, identity),
            "Fail": grpc.unary_unary_rpc_method_handler(fail, identity, identity),
            "PublicFail": grpc.unary_unary_rpc_method_handler(fail, identity, identity),
            "Slow": grpc.unary_unary_rpc_method_handler(slow, identity, identity),
            "Stream": grpc.unary_stream_rpc_method_handler(stream, identity, identity),
            "StreamWriter": grpc.unary_stream_rpc_method_handler(stream_writer, identity, identity),
        },
    )


class Client:
    def __init__(self, channel: grpc.aio.Channel, observer: RecordingObserver) -> None:
        self.channel = channel
        self.observer = observer

    def unary(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        return self.channel.unary_unary(f"/{SERVICE}/{method}", identity, identity)

    def stream(self, method: str) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
        return self.channel.unary_stream(f"/{SERVICE}/{method}", identity, identity)


@pytest.fixture(scope="module")
def log_buffer() -> io.StringIO:
    return io.StringIO()


@pytest_asyncio.fixture(scope="module")
async def client(log_buffer: io.StringIO) -> AsyncIterator[Client]:
    configure_logging(level="DEBUG", stream=log_buffer)
    from tests.unit.common.keys import AUDIENCE, HS_SECRET, ISSUER

    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, hs256_secret=HS_SECRET)
    observer = RecordingObserver()
    server = grpc.aio.server(
        interceptors=[
            RpcInterceptor(
                verifier=verifier,
                anonymous_methods={PUBLIC, f"{SERVICE}/PublicFail", f"/{SERVICE}/Stream", f"/{SERVICE}/Slow"},
                observer=observer,
            )
        ]
    )
    server.add_generic_rpc_handlers([handlers()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Client(channel, observer)
    await server.stop(None)
    configure_logging()


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def log_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


async def test_anonymous_call_allowed_on_public_method(client: Client):
    reply = json.loads(await client.unary("Public")(b""))
    assert reply["user"] is None
    assert len(reply["request_id"]) == 32  # generated uuid4 hex


async def test_anonymous_call_refused_on_private_method(client: Client):
    error = await rpc_error(client.unary("Private")(b""))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    details = parse_error_details(error.trailing_metadata())
    assert details is not None and details.reason == "TOKEN_MISSING"


async def test_valid_token_reaches_the_handler(client: Client, hs_token: Callable[..., str]):
    reply = json.loads(await client.unary("Private")(b"", metadata=auth(hs_token("u-7", name="Grace"))))
    assert reply == {"user": "u-7", "name": "Grace"}
    reply = json.loads(await client.unary("Public")(b"", metadata=auth(hs_token("u-8"))))
    assert reply["user"] == "u-8"


@pytest.mark.parametrize("method", ["Public", "Private"])
async def test_bad_token_is_refused_even_on_public_method(client: Client, method: str):
    error = await rpc_error(client.unary(method)(b"", metadata=auth("not.a.jwt")))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    details = parse_error_details(error.trailing_metadata())
    assert details is not None and details.reason == "TOKEN_INVALID"


async def test_expired_token_has_its_own_reason(client: Client, hs_token: Callable[..., str]):
    error = await rpc_error(client.unary("Public")(b"", metadata=auth(hs_token(expires_in=-3600))))
    details = parse_error_details(error.trailing_metadata())
    assert details is not None and details.reason == "TOKEN_EXPIRED"


async def test_request_id_is_echoed_and_bound(client: Client):
    call = client.unary("Public")(b"", metadata=(("x-request-id", "req-abc-123"),))
    reply = json.loads(await call)
    assert reply["request_id"] == "req-abc-123"
    assert ("x-request-id", "req-abc-123") in tuple(await call.trailing_metadata())


async def test_unusable_request_id_is_replaced(client: Client):
    call = client.unary("Public")(b"", metadata=(("x-request-id", "x" * 200),))
    reply = json.loads(await call)
    assert len(reply["request_id"]) == 32 and reply["request_id"] != "x" * 200
    assert dict(await call.trailing_metadata())["x-request-id"] == reply["request_id"]


async def test_request_id_is_sent_back_on_errors_too(client: Client):
    call = client.unary("Private")(b"", metadata=(("x-request-id", "failing-req"),))
    error = await rpc_error(call)
    assert dict(error.trailing_metadata())["x-request-id"] == "failing-req"


async def test_domain_error_becomes_rich_status(client: Client, hs_token: Callable[..., str]):
    error = await rpc_error(client.unary("Fail")(b"not-found", metadata=auth(hs_token())))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "event events/42 does not exist"
    assert any(key == "grpc-status-details-bin" for key, _ in error.trailing_metadata())
    details = parse_error_details(error.trailing_metadata())
    assert details is not None
    assert (details.reason, details.domain, dict(details.metadata)) == (
        "EVENT_NOT_FOUND",
        "cowatch.io",
        {"name": "events/42"},
    )


async def test_field_violations_reach_the_client(client: Client):
    error = await rpc_error(client.unary("PublicFail")(b"invalid"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = parse_error_details(error.trailing_metadata())
    assert details is not None
    assert details.field_violations == (("event.title", "required"), ("event.capacity", "must be positive"))


async def test_unknown_exception_is_internal_with_generic_message(client: Client, log_buffer: io.StringIO):
    error = await rpc_error(client.unary("PublicFail")(b"boom", metadata=(("x-request-id", "boom-1"),)))
    assert error.code() is grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    assert b"hunter2" not in b"".join(v for _, v in error.trailing_metadata() if isinstance(v, bytes))
    line = next(entry for entry in log_lines(log_buffer) if entry.get("request_id") == "boom-1")
    assert line["code"] == "INTERNAL"
    assert "RuntimeError" in line["exception"]  # the traceback stays server-side


async def test_database_down_is_unavailable(client: Client):
    error = await rpc_error(client.unary("PublicFail")(b"db-down"))
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    details = parse_error_details(error.trailing_metadata())
    assert details is not None and details.reason == "DATABASE_UNAVAILABLE"


async def test_handler_abort_passes_through(client: Client):
    error = await rpc_error(client.unary("PublicFail")(b"abort"))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "handler aborted itself"


async def test_server_streaming_is_wrapped(client: Client):
    call = client.stream("Stream")(b"", metadata=(("x-request-id", "stream-1"),))
    assert [item async for item in call] == [b"0:stream-1", b"1:stream-1", b"2:stream-1"]

    failing = client.stream("Stream")(b"fail")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for item in failing:
            received.append(item)
    assert len(received) == 1
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    details = parse_error_details(info.value.trailing_metadata())
    assert details is not None and details.reason == "STREAM_BROKE"


async def test_writer_style_streaming_requires_auth(client: Client, hs_token: Callable[..., str]):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in client.stream("StreamWriter")(b""):
            pass
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    call = client.stream("StreamWriter")(b"", metadata=auth(hs_token("w-1")))
    assert [item async for item in call] == [b"w-1"]


async def test_one_log_line_per_rpc_without_the_token(
    client: Client, hs_token: Callable[..., str], log_buffer: io.StringIO
):
    token = hs_token("logged-user")
    await client.unary("Private")(b"", metadata=(*auth(token), ("x-request-id", "log-1")))
    lines = [entry for entry in log_lines(log_buffer) if entry.get("request_id") == "log-1"]
    assert len(lines) == 1
    line = lines[0]
    assert line["event"] == "rpc"
    assert line["method"] == PRIVATE
    assert line["code"] == "OK"
    assert line["user_id"] == "logged-user"
    assert isinstance(line["duration_ms"], float)
    assert token not in log_buffer.getvalue()


async def test_contextvars_do_not_leak_between_concurrent_rpcs(client: Client, hs_token: Callable[..., str]):
    calls = [
        client.unary("Public")(b"", metadata=(*auth(hs_token(f"u{i}")), ("x-request-id", f"c{i}"))) for i in range(50)
    ]
    replies = [json.loads(r) for r in await asyncio.gather(*calls)]
    assert [(r["user"], r["request_id"]) for r in replies] == [(f"u{i}", f"c{i}") for i in range(50)]


async def test_unknown_method_is_unimplemented(client: Client):
    error = await rpc_error(client.unary("Nope")(b""))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_deadline_is_recorded_as_deadline_exceeded(client: Client):
    error = await rpc_error(client.unary("Slow")(b"", timeout=0.2))
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert await client.observer.wait_for(f"/{SERVICE}/Slow") is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_metrics_hook_sees_every_rpc(client: Client):
    await client.unary("Public")(b"")
    await rpc_error(client.unary("Private")(b""))
    codes = {(m, c) for m, c, _ in client.observer.finished}
    assert (PUBLIC, grpc.StatusCode.OK) in codes
    assert (PRIVATE, grpc.StatusCode.UNAUTHENTICATED) in codes
