"""The server interceptor: request id + logging → metrics hook → auth → errors, around every RPC.

grpc.aio interceptors run before the handler is chosen; to do work *inside* the RPC (where contextvars, the
servicer context and exceptions live) the interceptor returns a copy of the method handler whose behaviour is
wrapped. Wrapped handlers are cached per method, so the per-call cost is one dict lookup plus the wrapper.

Per RPC, in order:

1. **Request id**: the caller's ``x-request-id`` when it is printable ASCII of at most 128 characters, else a
   fresh random 128-bit hex. It is sent back in the trailing metadata and bound in contextvars
   (``context.request_id()``, and every log line through :func:`services.common.context.add_to_log`). Handlers that
   set trailing metadata themselves must keep it.
2. **Metrics**: :class:`RpcObserver` is told when the RPC ends (method, code, duration). No-op by default.
   **Load shedding**: with ``max_in_flight``, an RPC arriving while that many are being handled is refused at
   once with ``RESOURCE_EXHAUSTED`` / ``SERVER_OVERLOADED`` (never queued into a timeout). Health and
   reflection are never refused, so probes keep answering under overload. **Deadline**: the client's deadline
   is recorded for :mod:`services.common.deadline` (pool waits stay inside it).
3. **Auth**: ``authorization: Bearer <jwt>`` present → verified (a bad token is ``UNAUTHENTICATED`` even on a
   public method). Absent → allowed only for methods in ``anonymous_methods``, else ``UNAUTHENTICATED``
   ``TOKEN_MISSING``. Health and reflection are always anonymous and never look at the header.
4. **Text rule**: a request that does not decode (invalid UTF-8) or has a string breaking
   :mod:`services.common.text` (length, control characters) is ``INVALID_ARGUMENT`` naming each field, before
   the servicer runs.
5. **Errors**: a :class:`~services.common.errors.DomainError` (or a known infrastructure failure) aborts with
   the rich ``google.rpc.Status``; anything else aborts with ``INTERNAL`` / ``"internal error"`` and is logged
   with its traceback. ``context.abort`` from the handler (``AbortError``) passes through untouched.

One log line per RPC: ``event="rpc"``, ``request_id``, ``method``, ``code``, ``duration_ms``, ``user_id``
(plus ``reason`` on errors). Health/reflection calls log at DEBUG.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, suppress
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import grpc
from google.protobuf.message import DecodeError, Message

from services.common import context as request_context
from services.common import deadline
from services.common.auth import TokenVerifier
from services.common.errors import InvalidArgument, ResourceExhausted, Unauthenticated, Unavailable
from services.common.grpc_errors import as_domain_error, to_rpc_status
from services.common.identity import User
from services.common.logging import get_logger
from services.common.text import check_request

__all__ = [
    "ALWAYS_ANONYMOUS_PREFIXES",
    "REQUEST_ID_METADATA_KEY",
    "NoopObserver",
    "RpcInterceptor",
    "RpcObserver",
    "normalize_method",
    "passthrough",
    "valid_request_id",
]

REQUEST_ID_METADATA_KEY: Final = "x-request-id"
MAX_REQUEST_ID_LENGTH: Final = 128
ALWAYS_ANONYMOUS_PREFIXES: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_CACHE_LIMIT: Final = 1024

_log = get_logger("cowatch.rpc")

Behaviour = Callable[..., Any]


class _Undecodable:
    """What the wrapped deserializer hands on for bytes that are not the request message (e.g. invalid UTF-8)."""

    __slots__ = ()


_UNDECODABLE: Final = _Undecodable()


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer`` that returns :data:`_UNDECODABLE` instead of raising: grpc would answer UNKNOWN."""
    if deserializer is None:
        return None
    strict = deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return strict(data)
        except DecodeError:
            return _UNDECODABLE

    return deserialize


def passthrough(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """``serializer``, except that a handler's ``bytes`` answer is sent as it is: the message already serialized
    (e.g. stored in a cache), so a hit costs no parse and no re-serialization."""
    if serializer is None:
        return None
    serialize = serializer

    def serialize_or_pass(response: Any) -> bytes:
        return response if response.__class__ is bytes else serialize(response)

    return serialize_or_pass


def _check_request(request: Any) -> None:
    """INVALID_ARGUMENT for an undecodable request or one breaking the text rule (:mod:`services.common.text`)."""
    if request is _UNDECODABLE:
        raise InvalidArgument(
            "MALFORMED_REQUEST", "the request is not a valid protobuf message (strings must be valid UTF-8)"
        )
    if isinstance(request, Message):
        check_request(request).raise_if_any()


class RpcObserver(Protocol):
    """Metrics hook (Prometheus comes later). Must be cheap and must not raise."""

    def rpc_finished(self, method: str, code: grpc.StatusCode, duration_seconds: float) -> None: ...


class NoopObserver:
    def rpc_finished(self, method: str, code: grpc.StatusCode, duration_seconds: float) -> None:
        return None


def normalize_method(name: str) -> str:
    """``"pkg.Service/Method"`` or ``"/pkg.Service/Method"`` → ``"/pkg.Service/Method"`` (the wire form)."""
    return name if name.startswith("/") else f"/{name}"


def valid_request_id(value: str | bytes | None) -> str | None:
    """``value`` if usable as a request id (printable ASCII, 1–128 chars, no spaces), else ``None``."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_REQUEST_ID_LENGTH or not value.isascii() or not value.isprintable():
        return None
    if " " in value:
        return None
    return value


@dataclass(frozen=True, slots=True)
class _Policy:
    method: str
    anonymous: bool
    infrastructure: bool  # health / reflection: no auth, DEBUG logs


@dataclass(slots=True)
class _Rpc:
    policy: _Policy
    request_id: str
    authorization: str | None
    started: float
    rid_token: Token[str]
    method_token: Token[str]
    deadline_token: Token[float | None]
    admitted: bool = False
    user_token: Token[User | None] | None = None
    user: User | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    reason: str | None = None
    error: BaseException | None = field(default=None, repr=False)


class RpcInterceptor(grpc.aio.ServerInterceptor):
    """The cowatch server interceptor (see the module docstring)."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        anonymous_methods: Iterable[str] = (),
        observer: RpcObserver | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        self._verifier = verifier
        self._max_in_flight = max_in_flight
        self.in_flight = 0
        """RPCs being handled now (health and reflection not counted)."""
        self.refusing = False
        """Set on shutdown: every new RPC (health and reflection aside) is refused with UNAVAILABLE."""
        self.last_arrival = 0.0
        """``time.monotonic()`` when the last RPC (health and reflection aside) arrived."""
        self._anonymous = frozenset(normalize_method(m) for m in anonymous_methods)
        self._observer: RpcObserver = observer or NoopObserver()
        self._cache: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, self._policy(method))
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[method] = (handler, wrapped)
        return wrapped

    # --- building wrapped handlers ------------------------------------------------------------------------

    def _policy(self, method: str) -> _Policy:
        infrastructure = method.startswith(ALWAYS_ANONYMOUS_PREFIXES)
        return _Policy(method, anonymous=infrastructure or method in self._anonymous, infrastructure=infrastructure)

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], policy: _Policy) -> grpc.RpcMethodHandler[Any, Any]:
        deserializer = handler.request_deserializer if policy.infrastructure else _lenient(handler.request_deserializer)
        serializer = handler.response_serializer if policy.infrastructure else passthrough(handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary_response(handler.unary_unary, policy), deserializer, serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary_response(handler.stream_unary, policy), deserializer, serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream_response(handler.unary_stream, policy), deserializer, serializer
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream_response(handler.stream_stream, policy), deserializer, serializer
            )
        return handler

    def _unary_response(self, behaviour: Behaviour, policy: _Policy) -> Behaviour:
        async def unary_response(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            rpc = self._start(context, policy)
            try:
                await self._prepare(rpc, context)
                if not policy.infrastructure:
                    _check_request(request)
                result = behaviour(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except BaseException as exc:
                await self._fail(rpc, context, exc)
                raise
            finally:
                self._finish(rpc, context)

        return unary_response

    def _stream_response(self, behaviour: Behaviour, policy: _Policy) -> Behaviour:
        if inspect.iscoroutinefunction(behaviour):
            # reader/writer style: the handler calls context.write() and returns None
            return self._unary_response(behaviour, policy)

        async def stream_response(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            rpc = self._start(context, policy)
            try:
                await self._prepare(rpc, context)
                responses = behaviour(request, context)
                if inspect.isawaitable(responses):  # writer style behind a callable object / wrapper
                    await responses
                elif hasattr(responses, "__aiter__"):
                    async with aclosing(responses) as stream:
                        async for item in stream:
                            yield item
                else:  # a sync generator (sync-stack style handler)
                    for item in responses:
                        yield item
            except BaseException as exc:
                await self._fail(rpc, context, exc)
                raise
            finally:
                self._finish(rpc, context)

        return stream_response

    # --- per-call steps -----------------------------------------------------------------------------------

    def _start(self, context: grpc.aio.ServicerContext[Any, Any], policy: _Policy) -> _Rpc:
        supplied: str | None = None
        authorization: str | None = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_METADATA_KEY and supplied is None:
                supplied = value if isinstance(value, str) else None
            elif key == "authorization" and authorization is None:
                authorization = value if isinstance(value, str) else None
        # (128 random bits as hex, like uuid4().hex without the uuid object: this runs on every call)
        rid = valid_request_id(supplied) or os.urandom(16).hex()
        return _Rpc(
            policy=policy,
            request_id=rid,
            authorization=authorization,
            started=time.perf_counter(),
            rid_token=request_context.set_request_id(rid),
            method_token=request_context.set_method(policy.method),
            deadline_token=deadline.set_from_time_remaining(context.time_remaining()),
        )

    async def _prepare(self, rpc: _Rpc, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # The request id travels back in the trailers, not in early headers: sending headers at once would cost a
        # write per call and turn every error into a non-trailers-only response, which proxies (Envoy's
        # retry_on: unavailable) can no longer retry on another replica.
        context.set_trailing_metadata(((REQUEST_ID_METADATA_KEY, rpc.request_id),))
        if rpc.policy.infrastructure:
            return
        self.last_arrival = time.monotonic()
        if self.refusing:
            raise Unavailable("SHUTTING_DOWN", "the server is shutting down: retry, another replica will answer")
        if self._max_in_flight is not None and self.in_flight >= self._max_in_flight:
            raise ResourceExhausted(
                "SERVER_OVERLOADED",
                "the server is at its concurrency limit, retry with backoff",
                metadata={"max_in_flight": str(self._max_in_flight)},
            )
        self.in_flight += 1
        rpc.admitted = True
        header = rpc.authorization
        if header is None or not header.strip():
            if rpc.policy.anonymous:
                return
            raise Unauthenticated("TOKEN_MISSING", "this method requires a bearer token")
        user = self._verifier.authenticate(header)
        rpc.user = user
        rpc.user_token = request_context.set_user(user)

    async def _fail(self, rpc: _Rpc, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
        """Record the outcome; turn ordinary exceptions into a rich-status abort (which raises AbortError)."""
        if isinstance(exc, grpc.aio.AbortError):
            rpc.code = context.code() or grpc.StatusCode.UNKNOWN
            return
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            rpc.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            return
        if not isinstance(exc, Exception):
            rpc.code = grpc.StatusCode.UNKNOWN
            return
        error = as_domain_error(exc)
        status = to_rpc_status(exc)
        rpc.code = status.code
        if error is None:
            rpc.reason = "INTERNAL"
            rpc.error = exc
        else:
            rpc.reason = error.reason
        trailers = (*status.trailing_metadata, (REQUEST_ID_METADATA_KEY, rpc.request_id))
        await context.abort(status.code, status.details, trailing_metadata=trailers)

    def _finish(self, rpc: _Rpc, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        duration = time.perf_counter() - rpc.started
        if rpc.admitted:
            self.in_flight -= 1
        if rpc.code is grpc.StatusCode.OK and rpc.error is None:
            rpc.code = context.code() or grpc.StatusCode.OK  # a handler may set_code() and return
        try:
            self._observer.rpc_finished(rpc.policy.method, rpc.code, duration)
        except Exception:
            _log.exception("rpc observer failed")
        fields: dict[str, Any] = {
            "code": rpc.code.name,
            "duration_ms": round(duration * 1000, 3),
            "user_id": rpc.user.id if rpc.user else None,
        }
        if rpc.reason is not None:
            fields["reason"] = rpc.reason
        if rpc.error is not None:
            _log.error("rpc", exc_info=rpc.error, **fields)
        elif rpc.policy.infrastructure:
            _log.debug("rpc", **fields)
        elif rpc.code in _SERVER_SIDE_CODES:
            _log.warning("rpc", **fields)
        else:
            _log.info("rpc", **fields)
        # (the resets ignore ValueError: an async generator finalised outside the RPC's context)
        if rpc.user_token is not None:
            request_context.reset_user(rpc.user_token)
        request_context.reset_method(rpc.method_token)
        request_context.reset_request_id(rpc.rid_token)
        with suppress(ValueError):
            deadline.reset(rpc.deadline_token)


_SERVER_SIDE_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
