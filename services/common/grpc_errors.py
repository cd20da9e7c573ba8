"""The one place where exceptions become gRPC statuses.

Domain errors map through :data:`STATUS_CODES`; well-known infrastructure failures (Postgres down, pool
exhausted, serialization conflicts, timeouts) are classified by :func:`as_domain_error`; anything else is
``INTERNAL`` with a generic message (the interceptor logs the traceback server-side; nothing of it reaches
the client).

The status is a ``google.rpc.Status`` with an ``ErrorInfo`` (reason, domain ``cowatch.io``, metadata), a
``BadRequest`` when there are field violations and a ``RetryInfo`` for transient unavailability, sent in the
``grpc-status-details-bin`` trailer via ``grpc_status.rpc_status.to_status``. The violation list and the texts
are capped here (:data:`MAX_FIELD_VIOLATIONS`), so any error fits in a few kB of trailers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import asyncpg
import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped, unused-ignore]
from grpc_status import rpc_status

from services.common.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "DETAILS_METADATA_KEY",
    "ERROR_DOMAIN",
    "INTERNAL_MESSAGE",
    "STATUS_CODES",
    "RpcErrorDetails",
    "as_domain_error",
    "parse_error_details",
    "status_code_for",
    "to_rpc_status",
    "to_status_proto",
]

ERROR_DOMAIN: Final = "cowatch.io"
INTERNAL_MESSAGE: Final = "internal error"
DETAILS_METADATA_KEY: Final = "grpc-status-details-bin"

STATUS_CODES: Final[Mapping[type[DomainError], grpc.StatusCode]] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Aborted: grpc.StatusCode.ABORTED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}
"""DomainError subclass → gRPC code. Subclasses of these inherit their parent's code."""

_FALLBACK_CODE: Final = grpc.StatusCode.FAILED_PRECONDITION
"""For a bare ``DomainError`` (should not happen): a deliberate client-visible refusal, not a server fault."""

_RETRY_DELAY_SECONDS: Final = 1

MAX_FIELD_VIOLATIONS: Final = 20
"""At most this many field violations go out; ``ErrorInfo.metadata["omitted_violations"]`` counts the rest.
With the caps below an error stays under ~8 kB, well inside gRPC's 8 kB soft metadata limit (and Envoy's)."""
MAX_MESSAGE_LENGTH: Final = 1000
MAX_VIOLATION_TEXT: Final = 200


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_DB_UNAVAILABLE_TYPES: Final[tuple[type[BaseException], ...]] = (
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08, incl. ConnectionDoesNotExistError
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up / shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
    ConnectionError,
)
_LOCAL_OS_ERRORS: Final[tuple[type[OSError], ...]] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
"""OSErrors that are local bugs (a missing file), not a dependency being down: they stay INTERNAL."""


def status_code_for(exc: DomainError) -> grpc.StatusCode:
    for klass in type(exc).__mro__:
        code = STATUS_CODES.get(klass)
        if code is not None:
            return code
    return _FALLBACK_CODE


def _db_unavailable() -> Unavailable:
    return Unavailable("DATABASE_UNAVAILABLE", "the database is unavailable, retry later")


def as_domain_error(exc: BaseException) -> DomainError | None:
    """The client-facing error for ``exc``, or ``None`` when it is an unexpected failure (→ INTERNAL)."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, asyncpg.exceptions.SerializationError | asyncpg.exceptions.DeadlockDetectedError):
        return Aborted("CONCURRENT_MODIFICATION", "the operation conflicted with a concurrent change, retry it")
    if isinstance(exc, asyncpg.exceptions.QueryCanceledError | asyncio.TimeoutError):
        # TimeoutError is an OSError subclass: test it before the OSError branch below.
        return Unavailable("DATABASE_TIMEOUT", "the database did not answer in time, retry later")
    if isinstance(exc, _DB_UNAVAILABLE_TYPES):
        return _db_unavailable()
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        # The connection's protocol lost step with the server, seen when Postgres shuts down under load ("cannot
        # switch to state 12; another operation (2) is in progress": still consuming the server's FATAL). The pool
        # discards such a connection on release; a retry gets a fresh one.
        return _db_unavailable()
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        # "released back to the pool": asyncpg detaches a pooled connection from the code holding it when the
        # server closes that connection (PostgreSQL shutting down between two statements of one request); our code
        # uses a pooled connection only inside the block that holds it, so this means the connection died.
        text = str(exc).lower()
        if any(marker in text for marker in ("closed", "closing", "not initialized", "released back to the pool")):
            return _db_unavailable()
        return None
    if isinstance(exc, OSError) and not isinstance(exc, _LOCAL_OS_ERRORS):
        return _db_unavailable()
    return None


def _pack(
    message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest | error_details_pb2.RetryInfo,
) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status_proto(exc: BaseException) -> status_pb2.Status:
    """``google.rpc.Status`` for ``exc`` (never includes the text of an unexpected exception)."""
    error = as_domain_error(exc)
    if error is None:
        return status_pb2.Status(
            code=grpc.StatusCode.INTERNAL.value[0],
            message=INTERNAL_MESSAGE,
            details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=ERROR_DOMAIN))],
        )
    code = status_code_for(error)
    violations = error.field_violations[:MAX_FIELD_VIOLATIONS]
    omitted = len(error.field_violations) - len(violations)
    metadata = dict(error.metadata)
    message = error.message
    if omitted:
        metadata["omitted_violations"] = str(omitted)
        shown = "; ".join(f"{f}: {d}" for f, d in violations)
        message = f"{shown}; and {omitted} more field violation{'s' if omitted > 1 else ''}"
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata))]
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=_clip(f, MAX_VIOLATION_TEXT),
                            description=_clip(d, MAX_VIOLATION_TEXT),
                            reason=error.reason,
                        )
                        for f, d in violations
                    ]
                )
            )
        )
    if code is grpc.StatusCode.UNAVAILABLE:
        details.append(
            _pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=_RETRY_DELAY_SECONDS)))
        )
    return status_pb2.Status(code=code.value[0], message=_clip(message, MAX_MESSAGE_LENGTH), details=details)


def to_rpc_status(exc: BaseException) -> grpc.Status:
    """``grpc.Status`` (code, details, trailing metadata holding the rich status) for ``context.abort``."""
    return rpc_status.to_status(to_status_proto(exc))


# --- decoding (clients and tests) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RpcErrorDetails:
    """What a client learns from a failed call's ``grpc-status-details-bin`` trailer."""

    code: int
    message: str
    reason: str | None = None
    domain: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[tuple[str, str], ...] = ()
    retry_delay_seconds: float | None = None


def parse_error_details(
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
) -> RpcErrorDetails | None:
    """Decode the rich status from trailing metadata; ``None`` when there is none.

    Works with ``AioRpcError.trailing_metadata()`` and the tuple form of sync errors.
    """
    for key, value in trailing_metadata or ():
        if key != DETAILS_METADATA_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        reason: str | None = None
        domain: str | None = None
        metadata: dict[str, str] = {}
        violations: list[tuple[str, str]] = []
        retry: float | None = None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend((v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info_retry = error_details_pb2.RetryInfo()
                detail.Unpack(info_retry)
                retry = info_retry.retry_delay.ToTimedelta().total_seconds()
        return RpcErrorDetails(
            code=status.code,
            message=status.message,
            reason=reason,
            domain=domain,
            metadata=metadata,
            field_violations=tuple(violations),
            retry_delay_seconds=retry,
        )
    return None
