"""Opaque keyset page tokens (AIP-158).

A token is base64url (unpadded) of a compact JSON object ``{"v": 1, "k": [...last sort keys and id...],
"f": "<filter fingerprint>"}``. The fingerprint ties a token to the filters it was issued for: reusing it with
different filters is ``INVALID_ARGUMENT`` / ``INVALID_PAGE_TOKEN``, as is any malformed token. Tokens are not
signed: a crafted token can only move the keyset cursor, which never reveals rows the filters would not list.

Keys may be ``str``, ``int``, ``float``, ``bool``, ``None``, timezone-aware ``datetime`` or ``UUID``; they come
back with the same types.

    fp = filter_fingerprint({"city": "Berlin", "film_id": film_id})
    after = decode_page_token(request.page_token, fp)  # None on the first page
    ...
    next_token = encode_page_token([last.start_time, last.id], fp) if has_more else ""
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, Final
from uuid import UUID

from services.common.errors import InvalidArgument

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "PageKey",
    "clamp_page_size",
    "decode_page_token",
    "encode_page_token",
    "filter_fingerprint",
]

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 100
_MAX_TOKEN_LENGTH: Final = 2048
_VERSION: Final = 1
_REASON: Final = "INVALID_PAGE_TOKEN"

PageKey = str | int | float | bool | None | datetime | UUID


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Enum):
        return _canonical(value.value)
    if isinstance(value, set | frozenset):
        return sorted((_canonical(v) for v in value), key=repr)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


def filter_fingerprint(filters: Mapping[str, Any]) -> str:
    """First 16 hex digits of the sha256 of the canonical JSON of ``filters`` (keys sorted)."""
    blob = json.dumps(filters, sort_keys=True, separators=(",", ":"), default=_canonical, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _encode_key(value: PageKey) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("page token datetimes must be timezone-aware")
        return {"t": value.isoformat()}
    if isinstance(value, UUID):
        return {"u": value.hex}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"unsupported page key type {type(value).__name__}")


def _decode_key(value: Any) -> PageKey:
    if isinstance(value, dict):
        if set(value) == {"t"} and isinstance(value["t"], str):
            parsed = datetime.fromisoformat(value["t"])
            if parsed.tzinfo is None:
                raise ValueError("naive datetime")
            return parsed
        if set(value) == {"u"} and isinstance(value["u"], str):
            return UUID(hex=value["u"])
        raise ValueError("unknown tagged key")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ValueError("unsupported key")


def encode_page_token(keys: Sequence[PageKey], fingerprint: str) -> str:
    """The opaque token for "the page after the row whose sort keys are ``keys``"."""
    payload = {"v": _VERSION, "k": [_encode_key(k) for k in keys], "f": fingerprint}
    raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _invalid(description: str) -> InvalidArgument:
    return InvalidArgument.field("page_token", description, reason=_REASON)


def decode_page_token(token: str, fingerprint: str) -> tuple[PageKey, ...] | None:
    """The keys stored in ``token``, or ``None`` for an empty token (first page).

    Raises ``InvalidArgument`` (field ``page_token``, reason ``INVALID_PAGE_TOKEN``) when the token is malformed
    or was issued for different filters.
    """
    token = token.strip()
    if not token:
        return None
    if len(token) > _MAX_TOKEN_LENGTH:
        raise _invalid("page token is too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _invalid("page token is malformed") from None
    if (
        not isinstance(payload, dict)
        or payload.get("v") != _VERSION
        or not isinstance(payload.get("k"), list)
        or not isinstance(payload.get("f"), str)
    ):
        raise _invalid("page token is malformed")
    if payload["f"] != fingerprint:
        raise _invalid("page token does not match the request's filters; start again without a page token")
    try:
        return tuple(_decode_key(k) for k in payload["k"])
    except (ValueError, TypeError):
        raise _invalid("page token is malformed") from None


def clamp_page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """AIP-158: 0 → ``default``; above ``maximum`` → ``maximum``; negative → INVALID_ARGUMENT on ``page_size``."""
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    if requested == 0:
        return default
    return min(requested, maximum)
