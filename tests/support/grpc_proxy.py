"""A real gRPC proxy for client tests: one port in front of several services (routed by service name, as Envoy
does), forwarding raw request bytes and every response, status and trailer unchanged, recording each attempt and
injecting failures on demand (before or after the service has processed the request)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc


@dataclass
class Fault:
    code: grpc.StatusCode
    after_forward: bool
    """True: the service processes the request, then the client gets ``code`` (a reply lost on the way back)."""
    remaining: int


@dataclass(frozen=True)
class Attempt:
    method: str
    """Full method path, ``/cowatch.booking.v1.BookingService/CreateBooking``."""
    request: bytes
    """The serialized request as the client sent it."""
    deadline: float | None
    """Seconds the client's deadline left when the attempt arrived (``None``: no deadline)."""


@dataclass
class GrpcProxy:
    routes: Mapping[str, str]
    """Service full name → backend ``host:port``."""
    attempts: list[Attempt] = field(default_factory=list)
    _faults: dict[str, Fault] = field(default_factory=dict)
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _server: grpc.aio.Server | None = None
    port: int = 0

    def fail(
        self, method: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, *, after_forward: bool, times: int = 1
    ) -> None:
        """The next ``times`` attempts of ``method`` (``Service/Method``, package omitted or not) fail with ``code``."""
        self._faults[_short(method)] = Fault(code, after_forward, times)

    def reset(self) -> None:
        self.attempts.clear()
        self._faults.clear()

    def attempts_of(self, method: str) -> list[Attempt]:
        """Attempts of ``method`` (``CreateBooking``), oldest first."""
        return [a for a in self.attempts if a.method.endswith("/" + method)]

    async def start(self) -> GrpcProxy:
        self._channels = {service: grpc.aio.insecure_channel(target) for service, target in self.routes.items()}
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers([_Handler(self)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(1)
        for channel in self._channels.values():
            await channel.close()

    def _take_fault(self, method: str) -> Fault | None:
        fault = self._faults.get(_short(method))
        if fault is None or fault.remaining <= 0:
            return None
        fault.remaining -= 1
        return fault

    async def forward(self, method: str, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        self.attempts.append(Attempt(method, request, context.time_remaining()))
        fault = self._take_fault(method)
        if fault is not None and not fault.after_forward:
            await context.abort(fault.code, "injected by the test proxy before forwarding")
        service = method.split("/")[1]
        metadata = tuple(
            (k, v) for k, v in context.invocation_metadata() or () if k in ("authorization", "x-request-id")
        )
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channels[service].unary_unary(method)
        try:
            response: bytes = await call(request, metadata=metadata, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "", trailing_metadata=tuple(exc.trailing_metadata() or ()))
        if fault is not None:
            await context.abort(fault.code, "injected by the test proxy after the service answered")
        return response


def _short(method: str) -> str:
    """``/cowatch.booking.v1.BookingService/CreateBooking`` → ``BookingService/CreateBooking``."""
    return method.rsplit(".", 1)[-1]


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: GrpcProxy) -> None:
        self._proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = handler_call_details.method
        if method.split("/")[1] not in self._proxy.routes:
            return None

        async def forward(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return await self._proxy.forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(forward)
