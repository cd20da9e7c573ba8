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

Services use the one helper on top, :func:`keyset` → :class:`Keyset` → :class:`Page`:

    ks = keyset(q.page_size, q.page_token, {"host": host_id})
    rows = await repository.list(conn, after=ks.after, limit=ks.fetch)
    return ks.page(rows, lambda r: (r.start_time, r.id))
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Final, Generic, TypeVar
from uuid import UUID

from services.common.errors import InvalidArgument

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Keyset",
    "Page",
    "PageKey",
    "clamp_page_size",
    "decode_page_token",
    "encode_page_token",
    "filter_fingerprint",
    "keyset",
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


# --------------------------------------------------------------------------- the one keyset helper

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a List method: the items and the token of the next page (``""`` on the last one)."""

    items: list[T]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Keyset:
    """One List request's position in a keyset ordered by ``(sort time, id)``.

    Built by :func:`keyset` from the request's page size, page token and filters; the repository is asked for
    ``fetch`` rows after ``after``, and :meth:`page` cuts them into a :class:`Page`, with the next token holding the
    last row's keys (plus ``extra`` keys a method pins for later pages, such as the "now" of its first page).
    """

    limit: int
    fingerprint: str
    after: tuple[datetime, UUID] | None
    extra: tuple[PageKey, ...]
    """The extra keys of the token (empty on the first page)."""

    @property
    def fetch(self) -> int:
        """How many rows to ask for: one more than a page, to know whether there is a next one."""
        return self.limit + 1

    def page(self, rows: Sequence[T], last_keys: Callable[[T], tuple[datetime, UUID]], *extra: PageKey) -> Page[T]:
        items = list(rows[: self.limit])
        token = ""
        if len(rows) > self.limit:
            token = encode_page_token([*last_keys(items[-1]), *extra], self.fingerprint)
        return Page(items, token)


def keyset(
    page_size: int, page_token: str, filters: Mapping[str, Any], extra_types: Sequence[type | tuple[type, ...]] = ()
) -> Keyset:
    """Clamp the page size, check the token against ``filters`` and its keys' types (``(datetime, UUID, *extra)``);
    a token of another shape is ``INVALID_ARGUMENT`` / ``INVALID_PAGE_TOKEN`` on ``page_token``."""
    limit = clamp_page_size(page_size)
    fingerprint = filter_fingerprint(filters)
    keys = decode_page_token(page_token, fingerprint)
    if keys is None:
        return Keyset(limit, fingerprint, None, ())
    types: tuple[type | tuple[type, ...], ...] = (datetime, UUID, *extra_types)
    if len(keys) != len(types) or not all(isinstance(k, t) for k, t in zip(keys, types, strict=True)):
        raise _invalid("is malformed")
    first, second = keys[0], keys[1]
    assert isinstance(first, datetime) and isinstance(second, UUID)
    return Keyset(limit, fingerprint, (first, second), keys[2:])
