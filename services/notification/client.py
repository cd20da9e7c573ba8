"""gRPC client of the notification service (``cowatch.notification.v1.NotificationService``).

One :class:`NotificationClient` — one channel — per process. Every call has a deadline (passed per call: a
``timeout`` in the service config is applied about a second early by grpc's Python stack, grpc/grpc#34547 and
#40633, so it is left out); the channel's service config retries a call that failed with ``UNAVAILABLE`` (and
only that code: a retry of anything else could repeat a side effect or just fail again) a few times with a
short backoff, inside that deadline. The caller's
``x-request-id`` travels in the metadata. Longer outages are the relay's business: it keeps the message in the
outbox and tries again later with the same ``dedupe_key``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import grpc
from cowatch.notification.v1 import notification_pb2, notification_pb2_grpc
from google.protobuf import struct_pb2

from services.common import names, tracing

__all__ = ["NotificationClient", "Notifier", "SendResult", "service_config", "to_request"]

# The header services.common.interceptors reads and binds (not imported from there: that module pulls in the
# JWT stack, which this client — and the worker's start-up time — can do without).
REQUEST_ID_METADATA_KEY: Final = "x-request-id"
SERVICE_NAME: Final = notification_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name


@dataclass(frozen=True, slots=True)
class SendResult:
    notification_id: str
    duplicate: bool


class Notifier(Protocol):
    """The port the relay sends through (the gRPC client in production, fakes in unit tests)."""

    async def send(
        self,
        *,
        dedupe_key: str,
        recipients: Sequence[str],
        template_id: str,
        params: Mapping[str, Any],
        request_id: str = "",
    ) -> SendResult:
        """Send one message; raises ``grpc.aio.AioRpcError`` (or ``OSError``) when it was not accepted."""
        ...


def service_config(*, max_attempts: int) -> str:
    """The channel's service config: a retry policy for ``UNAVAILABLE`` only (the deadline is set per call)."""
    method_config: dict[str, Any] = {"name": [{"service": SERVICE_NAME}]}
    if max_attempts > 1:
        method_config["retryPolicy"] = {
            "maxAttempts": max_attempts,
            "initialBackoff": "0.1s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return json.dumps({"methodConfig": [method_config]})


def user_resource(user_id: str) -> str:
    """Outbox rows hold user ids; the contract names recipients ``users/{id}``."""
    return user_id if user_id.startswith("users/") else names.user(user_id)


def to_request(
    *, dedupe_key: str, recipients: Sequence[str], template_id: str, params: Mapping[str, Any]
) -> notification_pb2.SendRequest:
    struct = struct_pb2.Struct()
    # Struct holds JSON values only; anything else (dates, UUIDs) goes as its string form.
    struct.update(json.loads(json.dumps(dict(params), default=str)))
    return notification_pb2.SendRequest(
        dedupe_key=dedupe_key,
        recipients=[user_resource(r) for r in recipients],
        template_id=template_id,
        params=struct,
    )


class NotificationClient:
    """The process's channel to the notification service. ``await close()`` at shutdown."""

    def __init__(
        self,
        address: str,
        *,
        timeout_seconds: float = 5.0,
        retry_attempts: int = 3,
        tls: bool = False,
    ) -> None:
        self._timeout = timeout_seconds
        options: list[tuple[str, Any]] = [
            ("grpc.service_config", service_config(max_attempts=retry_attempts)),
            ("grpc.enable_retries", 1),
            # Notice a dead peer on an idle channel instead of waiting for the next call to time out.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Reconnect quickly once the service is back (the default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ]
        # Tracing on: a client span per Send, and its traceparent in the metadata (none installed when off).
        interceptors = tracing.client_interceptors() or None
        if tls:
            self._channel = grpc.aio.secure_channel(
                address, grpc.ssl_channel_credentials(), options=options, interceptors=interceptors
            )
        else:
            self._channel = grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
        self._stub: notification_pb2_grpc.NotificationServiceAsyncStub = notification_pb2_grpc.NotificationServiceStub(
            self._channel
        )

    async def send(
        self,
        *,
        dedupe_key: str,
        recipients: Sequence[str],
        template_id: str,
        params: Mapping[str, Any],
        request_id: str = "",
    ) -> SendResult:
        request = to_request(dedupe_key=dedupe_key, recipients=recipients, template_id=template_id, params=params)
        metadata = ((REQUEST_ID_METADATA_KEY, request_id),) if request_id else None
        response = await self._stub.Send(request, timeout=self._timeout, metadata=metadata, wait_for_ready=False)
        return SendResult(notification_id=response.notification_id, duplicate=response.duplicate)

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)
