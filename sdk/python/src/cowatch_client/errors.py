"""Typed errors: every failed call raises a :class:`CowatchError` subclass chosen by its ``ErrorInfo.reason``.

The server sends a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer with an ``ErrorInfo`` (a stable
``reason`` such as ``EVENT_SOLD_OUT`` and string metadata), a ``BadRequest`` listing field violations for bad input
and a ``RetryInfo`` for transient failures. The class is picked by reason first (so it does not change when the
server moves a reason to another status code), then by status code for reasons this version does not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Protocol

import grpc
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "AlreadyExists",
    "Cancelled",
    "Conflict",
    "CowatchError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SoldOut",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]

DETAILS_KEY: Final = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (``google.rpc.BadRequest.FieldViolation``)."""

    field: str
    """Path of the field in the request, e.g. ``event.capacity`` or ``booking.seats``."""

    description: str
    """What is wrong with it, e.g. ``must be between 1 and 4``."""


class CowatchError(Exception):
    """A call failed. Subclasses name the family of the failure; catch this one for all of them."""

    code: grpc.StatusCode
    """The gRPC status code."""

    message: str
    """Human-readable English sentence from the server (or from gRPC for transport failures)."""

    reason: str
    """Stable UPPER_SNAKE_CASE cause to switch on (``ErrorInfo.reason``), e.g. ``EVENT_SOLD_OUT``; ``""`` when the
    failure did not come from the service (a proxy, the network, a deadline)."""

    domain: str
    """``ErrorInfo.domain``: ``cowatch.io`` for the service's own errors."""

    metadata: Mapping[str, str]
    """``ErrorInfo.metadata``: facts about the failure, e.g. ``{"seats_available": "1"}`` or
    ``{"current_etag": "..."}``."""

    field_violations: tuple[FieldViolation, ...]
    """Every bad request field at once (``BadRequest``), for ``InvalidArgument``; empty otherwise."""

    retry_delay: float | None
    """Seconds the server asks to wait before retrying (``RetryInfo``), if it said."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{reason or code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = MappingProxyType(dict(metadata or {}))
        self.field_violations = field_violations
        self.retry_delay = retry_delay

    @property
    def fields(self) -> dict[str, str]:
        """The field violations as ``{field: description}``."""
        return {v.field: v.description for v in self.field_violations}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, message={self.message!r})"


class InvalidArgument(CowatchError):
    """Bad input (``INVALID_ARGUMENT``, ``INVALID_PAGE_TOKEN``, ``REQUEST_ID_REUSED``); see ``field_violations``."""


class Unauthenticated(CowatchError):
    """No token, or a bad or expired one (``TOKEN_MISSING``, ``TOKEN_INVALID``, ``TOKEN_EXPIRED``)."""


class PermissionDenied(CowatchError):
    """The caller may not do this (``NOT_EVENT_HOST``, ``NOT_BOOKING_GUEST``, ``NOT_REVIEW_AUTHOR``...)."""


class NotFound(CowatchError):
    """No such resource, or one the caller may not see (``EVENT_NOT_FOUND`` — also a private event without its
    invite token —, ``BOOKING_NOT_FOUND``...)."""


class AlreadyExists(CowatchError):
    """The caller already did this (``ALREADY_BOOKED``, ``ALREADY_REVIEWED``, ``ALREADY_WAITLISTED``); ``metadata``
    names the existing resource when the server knows it (``waitlist_entry``)."""


class FailedPrecondition(CowatchError):
    """The resource's state forbids the call (``EVENT_NOT_BOOKABLE``, ``BOOKING_OVERLAP``, ``HOST_CANNOT_BOOK``,
    ``NO_OPEN_OFFER``, ``SEATS_AVAILABLE``...)."""


class SoldOut(CowatchError):
    """Not enough free seats left (``EVENT_SOLD_OUT``); ``metadata["seats_available"]`` says how many are left.

    Chosen by reason, whatever the status code the server uses for it (``RESOURCE_EXHAUSTED`` or
    ``FAILED_PRECONDITION``)."""


class Conflict(CowatchError):
    """The resource changed under the call (``ABORTED``: ``ETAG_MISMATCH`` with ``metadata["current_etag"]``,
    ``CONCURRENT_MODIFICATION``): read it again and retry."""


class ResourceExhausted(CowatchError):
    """The server or the edge refused the call for load (``SERVER_OVERLOADED``, rate limits): retry later."""


class Unavailable(CowatchError):
    """The service or one of its dependencies is down (``DATABASE_UNAVAILABLE``, ``SERVICE_STARTING``, network).
    Raised after the client's own retries, or at once for calls it does not retry."""


class DeadlineExceeded(CowatchError):
    """The call did not finish within its deadline. A write may or may not have happened: repeat it with the same
    ``request_id`` to find out safely."""


class Cancelled(CowatchError):
    """The call was cancelled."""


class Internal(CowatchError):
    """A server fault (``INTERNAL``, ``UNKNOWN``, ``DATA_LOSS``, ``UNIMPLEMENTED``)."""


_BY_REASON: Final[Mapping[str, type[CowatchError]]] = {
    "EVENT_SOLD_OUT": SoldOut,
    "ETAG_MISMATCH": Conflict,
    "CONCURRENT_MODIFICATION": Conflict,
    "ALREADY_BOOKED": AlreadyExists,
    "ALREADY_REVIEWED": AlreadyExists,
    "ALREADY_WAITLISTED": AlreadyExists,
    "WAITLIST_ENTRY_NOT_FOUND": NotFound,
    "NOT_WAITLIST_GUEST": PermissionDenied,
    "NO_OPEN_OFFER": FailedPrecondition,
    "SEATS_AVAILABLE": FailedPrecondition,
    "BOOKING_NOT_CONFIRMED": FailedPrecondition,
    "ATTENDANCE_PERIOD_OVER": FailedPrecondition,
    "INVALID_ARGUMENT": InvalidArgument,
    "INVALID_PAGE_TOKEN": InvalidArgument,
    "REQUEST_ID_REUSED": InvalidArgument,
    "EVENT_NOT_FOUND": NotFound,
    "BOOKING_NOT_FOUND": NotFound,
    "REVIEW_NOT_FOUND": NotFound,
    "USER_NOT_FOUND": NotFound,
    "TOKEN_MISSING": Unauthenticated,
    "TOKEN_INVALID": Unauthenticated,
    "TOKEN_EXPIRED": Unauthenticated,
    "SERVER_OVERLOADED": ResourceExhausted,
    "DATABASE_UNAVAILABLE": Unavailable,
    "DATABASE_TIMEOUT": Unavailable,
    "SERVICE_STARTING": Unavailable,
}
"""Reasons whose family is known. Reasons not listed here fall back on :data:`_BY_CODE`."""

_BY_CODE: Final[Mapping[grpc.StatusCode, type[CowatchError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


class RpcFailure(Protocol):
    """What both ``grpc.RpcError`` (sync) and ``grpc.aio.AioRpcError`` expose about a failed call."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> Any: ...


def error_class(reason: str, code: grpc.StatusCode) -> type[CowatchError]:
    """The exception class for a failure: by ``reason`` when known, else by ``code``."""
    return _BY_REASON.get(reason) or _BY_CODE.get(code, Internal)


def from_rpc_error(call: RpcFailure) -> CowatchError:
    """The typed exception for a failed gRPC call, with the details decoded from its trailers."""
    code = call.code()
    reason, domain = "", ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    for key, value in call.trailing_metadata() or ():
        if key != DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    return error_class(reason, code)(
        code,
        call.details() or code.name,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(violations),
        retry_delay=retry_delay,
    )
