"""AIP-155 request ids, stored in Postgres in the same transaction as the write they guard.

``claim`` is the first statement of the write's transaction. It inserts the key; a concurrent retry with the
same key blocks on that row until the first transaction ends, then sees it and replays. A first call that fails
rolls back and leaves no key, so its retry runs afresh.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from uuid import UUID

from services.common.dbtypes import Conn
from services.common.errors import InvalidArgument

CLAIM = """
INSERT INTO idem.requests (caller_id, method, request_id, request_hash) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING 1
"""
EXISTING = """
SELECT request_hash, resource_name FROM idem.requests
WHERE caller_id = $1 AND method = $2 AND request_id = $3
"""
RECORD = """
UPDATE idem.requests SET resource_name = $4 WHERE caller_id = $1 AND method = $2 AND request_id = $3
"""


@dataclass(frozen=True, slots=True)
class RequestKey:
    """Who sent which request id to which method, and a fingerprint of the request itself."""

    caller_id: str
    method: str
    request_id: UUID
    request_hash: bytes


def parse_request_id(value: str, field_name: str = "request_id") -> UUID | None:
    """Empty → None (no idempotency); otherwise it must be a UUID."""
    if not value:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise InvalidArgument.field(field_name, "must be a UUID") from None


def fingerprint(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


async def claim(conn: Conn, key: RequestKey | None) -> str | None:
    """Claim ``key`` in the current transaction.

    Returns ``None`` when the caller should do the work (new key, or no key), or the resource name recorded by
    an earlier identical request, which the caller should return instead. Raises REQUEST_ID_REUSED when the key
    was used for a different request.
    """
    if key is None:
        return None
    inserted = await conn.fetchval(CLAIM, key.caller_id, key.method, key.request_id, key.request_hash)
    if inserted:
        return None
    row = await conn.fetchrow(EXISTING, key.caller_id, key.method, key.request_id)
    if row is None:  # pragma: no cover - the conflicting row was committed before we looked
        raise InvalidArgument.field("request_id", "is being used by a concurrent request", "REQUEST_ID_REUSED")
    if row["request_hash"] != key.request_hash:
        raise InvalidArgument(
            "REQUEST_ID_REUSED",
            "request_id was already used for a different request",
            field_violations=[("request_id", "was already used for a different request")],
        )
    resource: str | None = row["resource_name"]
    return resource or ""


async def record(conn: Conn, key: RequestKey | None, resource_name: str) -> None:
    """Remember which resource the claimed request produced (same transaction as the write)."""
    if key is None:
        return
    await conn.execute(RECORD, key.caller_id, key.method, key.request_id, resource_name)
