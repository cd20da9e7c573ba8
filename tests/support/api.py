"""Helpers for API tests: tokens, metadata and decoding rich errors (google.rpc.Status details)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

from services.common.auth import issue_token

ISSUER = "https://auth.test.cowatch"
AUDIENCE = "cowatch-test"
HS256_SECRET = "test-secret-that-is-at-least-32-bytes-long!!"


@dataclass(frozen=True)
class Caller:
    """A user with a valid token."""

    id: str
    name: str
    token: str = field(repr=False)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    @property
    def resource(self) -> str:
        return f"users/{self.id}"


def new_caller(name: str = "Test User", *, user_id: str | None = None) -> Caller:
    uid = user_id or f"u-{uuid.uuid4().hex[:12]}"
    token = issue_token(subject=uid, issuer=ISSUER, audience=AUDIENCE, key=HS256_SECRET, name=name)
    return Caller(uid, name, token)


@dataclass(frozen=True)
class RichError:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    fields: dict[str, str]


def rich_error(exc: grpc.aio.AioRpcError) -> RichError:
    """Decode ErrorInfo and BadRequest from the status details in the trailing metadata."""
    reason = ""
    meta: dict[str, str] = {}
    fields: dict[str, str] = {}
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                meta = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields = {v.field: v.description for v in bad.field_violations}
    return RichError(exc.code(), exc.details() or "", reason, meta, fields)


async def expect_error(call: object) -> RichError:
    """Await an RPC that must fail; return its decoded error."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return rich_error(exc)
    raise AssertionError("the call succeeded but an error was expected")
