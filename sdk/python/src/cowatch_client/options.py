"""How a client talks to the API: deadlines and retries, turned into gRPC channel options."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.descriptor import ServiceDescriptor

from cowatch_client._proto.cowatch.booking.v1 import service_pb2 as booking_service
from cowatch_client._proto.cowatch.event.v1 import service_pb2 as event_service
from cowatch_client._proto.cowatch.review.v1 import service_pb2 as review_service
from cowatch_client._version import __version__

__all__ = ["ClientOptions", "RetryPolicy", "retried_methods"]

SERVICES: Final[tuple[ServiceDescriptor, ...]] = (
    event_service.DESCRIPTOR.services_by_name["EventService"],
    booking_service.DESCRIPTOR.services_by_name["BookingService"],
    review_service.DESCRIPTOR.services_by_name["ReviewService"],
)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of calls that failed with ``UNAVAILABLE``, done by gRPC itself (its retry policy: exponential backoff
    with full jitter, every attempt inside the call's one deadline).

    Only safe calls are retried: reads (``Get*``, ``List*``) and writes that carry a ``request_id``, which the client
    fills with a fresh UUID4 per call and which the retry sends again unchanged, so the server does the write once.
    Other writes (updates, completing an event, rotating an invite link) are never retried.
    """

    max_attempts: int = 4
    """Attempts in all, the first included; 1 turns retries off. gRPC caps it at 5."""

    initial_backoff: float = 0.1
    """Seconds; the first retry waits a random time in ``[0, initial_backoff)``."""

    max_backoff: float = 2.0
    """Seconds; the bound of the (jittered) wait between attempts."""

    backoff_multiplier: float = 2.0
    """Growth of the backoff bound from one retry to the next."""


@dataclass(frozen=True)
class ClientOptions:
    """Everything a client can be tuned with; the defaults suit interactive use."""

    timeout: float = 10.0
    """Default deadline of each call in seconds (all its attempts together); a call's ``timeout=`` overrides it."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """When and how failed calls are retried."""

    channel_options: Sequence[tuple[str, Any]] = ()
    """Extra gRPC channel arguments, e.g. ``("grpc.keepalive_time_ms", 30000)``."""


def retried_methods() -> list[tuple[str, str]]:
    """``(service, method)`` pairs safe to retry: reads (``Get``, ``List``, ``Export``), and writes whose request
    has a ``request_id``."""
    return [
        (service.full_name, method.name)
        for service in SERVICES
        for method in service.methods
        if method.name.startswith(("Get", "List", "Export")) or "request_id" in method.input_type.fields_by_name
    ]


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def service_config(retry: RetryPolicy) -> str:
    """The gRPC service config (JSON) with the retry policy for :func:`retried_methods`."""
    if retry.max_attempts <= 1:
        return json.dumps({"methodConfig": []})
    policy = {
        "maxAttempts": retry.max_attempts,
        "initialBackoff": _seconds(retry.initial_backoff),
        "maxBackoff": _seconds(retry.max_backoff),
        "backoffMultiplier": retry.backoff_multiplier,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    names = [{"service": service, "method": method} for service, method in retried_methods()]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


def channel_arguments(options: ClientOptions) -> list[tuple[str, Any]]:
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(options.retry)),
        ("grpc.service_config_disable_resolution", 1),  # ours, never one from DNS
        ("grpc.primary_user_agent", f"cowatch-client-python/{__version__}"),
        *options.channel_options,
    ]
