"""The bare echo method scenarios measure against: ``/cowatch.bench.v1.Echo/Echo`` returns the request's bytes —
an RPC with every per-call cost of the server stack it is added to and no work of its own."""

from __future__ import annotations

import grpc

__all__ = ["ECHO_METHOD", "ECHO_SERVICE", "echo_handler"]

ECHO_SERVICE = "cowatch.bench.v1.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def echo_handler() -> grpc.GenericRpcHandler:
    """A generic handler serving :data:`ECHO_METHOD` with identity (de)serialisation."""
    return grpc.method_handlers_generic_handler(ECHO_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})
