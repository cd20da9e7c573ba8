"""Small protobuf helpers shared by the mappers (proto-aware; never imported by domain code)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cowatch.type.v1 import rating_pb2
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from services.common.errors import InvalidArgument
from services.common.idempotency import RequestKey, fingerprint, parse_request_id
from services.common.identity import User
from services.common.vocabulary import Rating, Reliability

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """Aware datetime → Timestamp; ~3x faster than ``Timestamp.FromDatetime`` (lists map thousands of these)."""
    seconds, micros = divmod((value - _EPOCH) // _MICROSECOND, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=micros * 1000)


def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    return None if value is None else timestamp(value)


def from_timestamp(ts: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A valid Timestamp → aware UTC datetime; out-of-range values are INVALID_ARGUMENT on ``field``."""
    if not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument.field(field, "is not a valid timestamp")
    try:
        value = ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument.field(field, "is not a valid timestamp") from None
    if not 1970 <= value.year <= 9998:
        raise InvalidArgument.field(field, "is out of range")
    return value


def from_duration(d: duration_pb2.Duration, field: str) -> timedelta:
    if abs(d.seconds) > 10 * 365 * 86400 or not -999_999_999 <= d.nanos <= 999_999_999:
        raise InvalidArgument.field(field, "is out of range")
    return timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


def to_duration(value: timedelta) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def request_key(user: User, method: str, request: Message, request_id: str) -> RequestKey | None:
    """The idempotency key of ``request``: its ``request_id`` plus a hash of everything else in it."""
    parsed = parse_request_id(request_id)
    if parsed is None:
        return None
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return RequestKey(
        caller_id=user.id,
        method=method,
        request_id=parsed,
        request_hash=fingerprint(copy.SerializeToString(deterministic=True)),
    )


def rating_to_proto(rating: Rating) -> rating_pb2.Rating:
    return rating_pb2.Rating(average=rating.average, count=rating.count)


def reliability_to_proto(r: Reliability) -> rating_pb2.Reliability:
    return rating_pb2.Reliability(attended=r.attended, no_show=r.no_show, has_history=r.has_history, ratio=r.ratio)
