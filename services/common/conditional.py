"""Conditional GET (RFC 9110 §8.8.3, §13.1.2) for RPCs that Envoy's JSON transcoder serves as plain HTTP GETs.

The transcoder forwards the request's headers as gRPC metadata, so a handler reads ``If-None-Match`` from
``if-none-match``; and it passes the response's initial metadata through as HTTP headers, so a handler sends
``ETag`` and ``Cache-Control`` as ``etag``/``cache-control``. What the transcoder cannot do is answer 304: a gRPC
OK always becomes 200. So on a match the handler answers an empty body with :data:`NOT_MODIFIED_HEADER`, and the
Lua filter in ``envoy/envoy.yaml`` turns that into a real ``304 Not Modified`` (ETag kept, no body). A gRPC client
calling the RPC directly sees the empty body and the same header.

ETags here are **weak** (``W/"…"``): they promise the same *content*, not the same bytes. A feed rendered twice
differs in ``DTSTAMP`` (the time it was rendered, RFC 5545 §3.8.7.2) though nothing in it changed, and a proxy
that compresses the body (NGINX's gzip) would have to weaken a strong tag anyway. ``If-None-Match`` is compared
weakly, as RFC 9110 §13.1.2 requires for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Final

import grpc

__all__ = [
    "CACHE_CONTROL",
    "NOT_MODIFIED_HEADER",
    "if_none_match",
    "matches",
    "response_metadata",
    "weak_etag",
]

NOT_MODIFIED_HEADER: Final = "x-cowatch-not-modified"
# Private: the URL may carry a secret (a calendar token, an invite token), so no shared cache may keep it.
# no-cache (not no-store): a calendar app may keep its copy, and must revalidate it every time it polls — which
# is what makes a poll a cheap 304 and shows every change at the next poll, where max-age would delay them.
CACHE_CONTROL: Final = "private, no-cache"
_MAX_HEADER: Final = 4096  # longer If-None-Match values are not ours: treated as absent


def weak_etag(*parts: object) -> str:
    """A weak entity tag over ``parts`` (their ``str``), opaque to clients."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:32]
    return f'W/"{digest}"'


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def matches(header: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` value matches ``etag`` by weak comparison (``*`` matches any)."""
    if not header or len(header) > _MAX_HEADER:
        return False
    if header.strip() == "*":
        return True
    ours = _opaque(etag)
    return any(_opaque(candidate) == ours for candidate in header.split(","))


def if_none_match(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The request's ``If-None-Match`` (all of its values, comma-joined), or ``""``."""
    values = [str(v) for k, v in context.invocation_metadata() or () if k == "if-none-match"]
    return ",".join(values)


def response_metadata(etag: str, *, not_modified: bool) -> Sequence[tuple[str, str | bytes]]:
    """Initial metadata for a conditional GET's answer: the validator, the caching policy and the 304 marker."""
    headers: list[tuple[str, str | bytes]] = [("etag", etag), ("cache-control", CACHE_CONTROL)]
    if not_modified:
        headers.append((NOT_MODIFIED_HEADER, "1"))
    return tuple(headers)
