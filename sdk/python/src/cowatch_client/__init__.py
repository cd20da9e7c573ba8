"""Python client of the cowatch API.

``CowatchClient`` (sync) and ``AsyncCowatchClient`` (asyncio) over the generated gRPC stubs add what every caller
would otherwise get wrong: a fresh ``request_id`` on every write, reused when the call is retried; retries on
``UNAVAILABLE`` only, only for reads and writes with a request id; a deadline on every call; failures as typed
exceptions (:mod:`cowatch_client.errors`) carrying the ``ErrorInfo`` reason and field violations; iterators over
paginated lists. Messages (``Event``, ``Booking``...) are the generated protobuf classes, re-exported from
:mod:`cowatch_client.types`.
"""

from cowatch_client._version import __version__
from cowatch_client.aio import AsyncCowatchClient
from cowatch_client.client import CowatchClient
from cowatch_client.errors import (
    AlreadyExists,
    Cancelled,
    Conflict,
    CowatchError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SoldOut,
    Unauthenticated,
    Unavailable,
)
from cowatch_client.options import ClientOptions, RetryPolicy

__all__ = [
    "AlreadyExists",
    "AsyncCowatchClient",
    "Cancelled",
    "ClientOptions",
    "Conflict",
    "CowatchClient",
    "CowatchError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "SoldOut",
    "Unauthenticated",
    "Unavailable",
    "__version__",
]
