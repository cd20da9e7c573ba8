from __future__ import annotations

import asyncpg
import grpc
import pytest

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
    Violations,
)
from services.common.grpc_errors import ERROR_DOMAIN, parse_error_details, to_rpc_status


def decode(exc: BaseException):
    status = to_rpc_status(exc)
    details = parse_error_details(status.trailing_metadata)
    assert details is not None
    assert details.code == status.code.value[0]
    assert details.message == status.details
    return status, details


@pytest.mark.parametrize(
    ("error_type", "code"),
    [
        (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound, grpc.StatusCode.NOT_FOUND),
        (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
        (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
        (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (Aborted, grpc.StatusCode.ABORTED),
        (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Unavailable, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_each_domain_error_has_its_code_and_reason(error_type: type[DomainError], code: grpc.StatusCode):
    status, details = decode(error_type("SOME_REASON", "a message", metadata={"event": "events/1"}))
    assert status.code is code
    assert status.details == "a message"
    assert details.reason == "SOME_REASON"
    assert details.domain == ERROR_DOMAIN
    assert dict(details.metadata) == {"event": "events/1"}


def test_subclass_of_a_domain_error_inherits_its_code():
    class EventSoldOut(FailedPrecondition):
        pass

    status, details = decode(EventSoldOut("EVENT_SOLD_OUT", "no seats left"))
    assert status.code is grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "EVENT_SOLD_OUT"


def test_field_violations_travel_as_bad_request():
    violations = Violations()
    violations.add("title", "must not be empty")
    violations.check(False, "capacity", "must be between 1 and 100")
    violations.check(True, "ignored", "never added")
    with pytest.raises(InvalidArgument) as info:
        violations.raise_if_any()
    status, details = decode(info.value)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_ARGUMENT"
    assert details.field_violations == (
        ("title", "must not be empty"),
        ("capacity", "must be between 1 and 100"),
    )


def test_no_violations_raise_nothing():
    Violations().raise_if_any()


def test_invalid_argument_field_helper():
    _, details = decode(InvalidArgument.field("page_size", "must not be negative", reason="BAD_PAGE"))
    assert details.reason == "BAD_PAGE"
    assert details.field_violations == (("page_size", "must not be negative"),)


def test_unknown_exception_is_internal_without_its_message():
    status, details = decode(RuntimeError("password=hunter2 in /srv/app.py line 3"))
    assert status.code is grpc.StatusCode.INTERNAL
    assert status.details == "internal error"
    assert details.reason == "INTERNAL"
    assert b"hunter2" not in status.trailing_metadata[0][1]


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        OSError(113, "No route to host"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        asyncpg.exceptions.InterfaceError("pool is closing"),
        # what a pooled connection's next call raises once the server has closed it (PostgreSQL shutting down)
        asyncpg.exceptions.InterfaceError(
            "cannot call Connection.fetch(): connection has been released back to the pool"
        ),
    ],
)
def test_database_connection_failures_are_unavailable(exc: BaseException):
    status, details = decode(exc)
    assert status.code is grpc.StatusCode.UNAVAILABLE
    assert details.reason == "DATABASE_UNAVAILABLE"
    assert details.retry_delay_seconds == 1


@pytest.mark.parametrize("exc", [TimeoutError(), asyncpg.exceptions.QueryCanceledError("canceling statement")])
def test_database_timeouts_are_unavailable_timeout(exc: BaseException):
    status, details = decode(exc)
    assert status.code is grpc.StatusCode.UNAVAILABLE
    assert details.reason == "DATABASE_TIMEOUT"


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.SerializationError("could not serialize access"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
    ],
)
def test_serialization_conflicts_are_aborted(exc: BaseException):
    status, details = decode(exc)
    assert status.code is grpc.StatusCode.ABORTED
    assert details.reason == "CONCURRENT_MODIFICATION"


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.exceptions.UniqueViolationError("duplicate key value"),
        FileNotFoundError(2, "No such file"),
    ],
)
def test_programming_errors_stay_internal(exc: BaseException):
    status, _ = decode(exc)
    assert status.code is grpc.StatusCode.INTERNAL


def test_no_details_in_plain_metadata():
    assert parse_error_details(()) is None
    assert parse_error_details(None) is None
