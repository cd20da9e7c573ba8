"""Schema-driven fuzzing: Hypothesis strategies built from the services' descriptors.

Every RPC of EventService, BookingService and ReviewService is read from the generated descriptors (the same ones
``gen/descriptors/cowatch.binpb`` is built from); its request message becomes a strategy field by field:

* every field may be missing; repeated fields get 0–4 items, sometimes up to 10,000;
* strings mix realistic values (names of real events, bookings and users, UUIDs, invite tokens, time zones) with
  arbitrary unicode (NUL and other control characters included), lookalikes (``events/../x``) and huge strings;
* integers hit their type's extremes as well as the small values the rules care about; doubles include NaN and ±inf;
  enums take known and unknown numbers; Timestamps and Durations go beyond their valid ranges;
* nested messages recurse (depth-limited).

:func:`json_call` turns a request into the HTTP/JSON call Envoy's transcoder serves (from the ``google.api.http``
annotation), optionally mangled (unknown keys, wrong JSON types, huge numbers).

How long the fuzz tests run: ``COWATCH_FUZZ_EXAMPLES`` (Hypothesis examples per test; each example is a batch of
calls) and ``COWATCH_FUZZ_SEED`` (a seed; unset = Hypothesis' derandomized, fixed sequence).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cowatch.booking.v1 import service_pb2 as booking_service
from cowatch.event.v1 import service_pb2 as event_service
from cowatch.review.v1 import service_pb2 as review_service
from google.api import annotations_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

__all__ = [
    "EXAMPLES",
    "METHODS",
    "SEED",
    "Rpc",
    "ValuePool",
    "json_call",
    "requests",
]

EXAMPLES = int(os.environ.get("COWATCH_FUZZ_EXAMPLES", "0") or 0)
"""Examples per fuzz test; 0 = the test's own CI default."""
SEED = os.environ.get("COWATCH_FUZZ_SEED") or None

_INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_MAX_DEPTH = 3


@dataclass(frozen=True)
class Rpc:
    service: str
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def request_class(self) -> type[Message]:
        return GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[Message]:
        return GetMessageClass(self.method.output_type)

    def __repr__(self) -> str:
        return self.path


METHODS: tuple[Rpc, ...] = tuple(
    Rpc(service.full_name, method)
    for module in (event_service, booking_service, review_service)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
)
"""Every RPC of the public API."""


@dataclass
class ValuePool:
    """Real values the fuzzer mixes in, so calls get past name parsing into the service layer."""

    names: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def name_strategy(self) -> st.SearchStrategy[str]:
        fake = [f"{c}/{uuid.UUID(int=0)}" for c in ("events", "bookings", "reviews", "users")]
        lookalikes = ["events/", "events/../x", "users//x", "users/a/b", "events/{x}", "/events/x", "events/%00"]
        return st.sampled_from([*self.names, *self.users, *fake, *lookalikes]) | st.builds(
            lambda c, u: f"{c}/{u}", st.sampled_from(["events", "bookings", "reviews", "users", "x"]), st.uuids()
        )


def _strings(pool: ValuePool, field_name: str, tame: bool) -> st.SearchStrategy[str]:
    anything = st.text(max_size=30)
    huge = st.sampled_from([2_047, 2_049, 5_001, 10_001, 12_000]).map(lambda n: "é" * n)
    special = st.sampled_from(["", " ", "\x00", "a\x00b", "\n", "\u202e", "\ufeff", "😀" * 3, "%C3%A4", "ä"])
    realistic: st.SearchStrategy[str]
    if field_name in {"name", "parent", "event", "booking", "host", "subject_user", "users", "user", "author"}:
        realistic = pool.name_strategy()
    elif field_name == "request_id":
        realistic = st.uuids().map(str) | st.sampled_from(["not-a-uuid", str(uuid.UUID(int=1))])
    elif field_name in {"invite_token", "page_token", "etag"}:
        realistic = st.sampled_from([*pool.tokens, "1", "0", "999999999999999999999"]) if pool.tokens else st.just("1")
    elif field_name == "time_zone":
        realistic = st.sampled_from(["Europe/Berlin", "UTC", "Mars/Olympus", "../../etc/passwd", "europe/berlin"])
    elif field_name in {"paths"}:
        realistic = st.sampled_from(["title", "capacity", "start_time", "place.city", "rating", "text", "x", "*"])
    else:
        realistic = st.text(st.characters(codec="utf-8", categories=["L", "N", "Zs", "P"]), min_size=1, max_size=40)
    if tame:
        return realistic
    return st.one_of(realistic, realistic, anything, special, huge)


def _scalar(fd: FieldDescriptor, pool: ValuePool, depth: int, tame: bool) -> st.SearchStrategy[Any]:
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return _strings(pool, fd.name, tame)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in _INT_BOUNDS:
        low, high = _INT_BOUNDS[t]
        if tame:
            return st.integers(max(low, 0), min(high, 10))
        edges = [v for v in (0, 1, -1, 2, 5, 100, 101, 1000, 1001, low, high, low + 1, high - 1) if low <= v <= high]
        return st.sampled_from(edges) | st.integers(max(low, -10), min(high, 2000)) | st.integers(low, high)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if t == FieldDescriptor.TYPE_DOUBLE else 32)
    if t == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        known = [v.number for v in fd.enum_type.values]
        if tame:
            return st.sampled_from(known)
        return st.sampled_from(known) | st.integers(-3, 50) | st.integers(-(2**31), 2**31 - 1)
    if t == FieldDescriptor.TYPE_MESSAGE:
        assert fd.message_type is not None
        return message_strategy(fd.message_type, pool, depth + 1, tame=tame)
    raise NotImplementedError(f"{fd.full_name}: type {t}")


def _well_known(desc: Descriptor, tame: bool) -> st.SearchStrategy[Message] | None:
    cls = GetMessageClass(desc)
    if desc.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
        seconds = st.sampled_from([0, -1, 1_700_000_000, 1_900_000_000, 253_402_300_799, -62_135_596_800]) | (
            st.integers(-(2**63), 2**63 - 1)
        )
        now_ish = st.integers(1_790_000_000, 1_900_000_000)  # the next few years: events that can exist
        nanos = st.sampled_from([0, 1, 999_999_999]) | st.integers(-(2**31), 2**31 - 1)
        if tame:
            hours = 3600 if desc.full_name == "google.protobuf.Duration" else 0
            return st.builds(
                lambda s: cls(seconds=s), st.integers(1, 30).map(lambda h: h * hours) if hours else now_ish
            )
        return st.builds(lambda s, n: cls(seconds=s, nanos=n), now_ish | seconds, nanos)
    return None


def message_strategy(
    desc: Descriptor, pool: ValuePool, depth: int = 0, *, tame: bool = False
) -> st.SearchStrategy[Message]:
    """Messages of type ``desc`` with any subset of fields set, to any value (see the module docstring); ``tame``
    keeps to plausible values (real names, small numbers, known enums), so calls get past validation."""
    special = _well_known(desc, tame)
    if special is not None:
        return special
    cls = GetMessageClass(desc)
    if depth > _MAX_DEPTH:
        return st.just(cls())
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            continue  # no request has a map
        value = _scalar(fd, pool, depth, tame)
        if fd.is_repeated and tame:
            value = st.lists(value, max_size=3)
        elif fd.is_repeated:
            # many copies of one item: short ones up to 10,000 (the error-size case), anything else up to 300
            if fd.type == FieldDescriptor.TYPE_STRING:
                item, counts = st.sampled_from(["x", "users/x", "users/a\x00", "events/" + "9" * 40]), [51, 10_000]
            else:
                item, counts = value, [51, 300]
            many = st.tuples(item, st.sampled_from(counts)).map(lambda pair: [pair[0]] * pair[1])
            value = st.lists(value, max_size=4) | many
        fields[fd.name] = st.none() | value
    return st.fixed_dictionaries(fields).map(lambda values: _build(cls, values))


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        if value is None:
            continue
        fd = msg.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if fd.is_repeated:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def requests(rpc: Rpc, pool: ValuePool) -> st.SearchStrategy[Message]:
    """Half plausible requests (they reach the service layer and the database), half wild ones."""
    return message_strategy(rpc.method.input_type, pool, tame=True) | message_strategy(rpc.method.input_type, pool)


# --- JSON through Envoy ----------------------------------------------------------------------------------------

_TEMPLATE = re.compile(r"\{([a-z_.]+)(?:=[^}]*)?\}")


def _rule(rpc: Rpc) -> tuple[str, str, str]:
    """(HTTP method, path template, body) of the RPC's ``google.api.http`` annotation."""
    rule = rpc.method.GetOptions().Extensions[annotations_pb2.http]
    kind = rule.WhichOneof("pattern")
    assert kind is not None, f"{rpc.path} has no google.api.http binding"
    return kind.upper(), getattr(rule, kind), rule.body


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    """Query parameters of a JSON value, the way the transcoder reads them (``a.b=1``, repeated keys)."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _flatten(f"{prefix}.{k}" if prefix else k, v)]
    if isinstance(value, list):
        return [pair for v in value for pair in _flatten(prefix, v)]
    if isinstance(value, bool):
        return [(prefix, "true" if value else "false")]
    return [(prefix, str(value))]


_MANGLES: Sequence[Callable[[dict[str, Any]], None]] = (
    lambda d: d.__setitem__("unknownField", 1),
    lambda d: d.__setitem__(next(iter(d), "x"), {"nested": [1, None]}),
    lambda d: d.__setitem__(next(iter(d), "pageSize"), 1e308),
    lambda d: d.__setitem__(next(iter(d), "pageSize"), "12abc"),
    lambda d: d.__setitem__(next(iter(d), "title"), "\u0000\U0001f600"),
    lambda d: d.__setitem__(next(iter(d), "seats"), -(2**70)),
)


def json_call(rpc: Rpc, request: Message, mangle: int | None = None) -> tuple[str, str, bytes | None] | None:
    """(HTTP method, path with query, body) for ``request``; ``None`` when the request has no JSON form
    (e.g. a Timestamp outside the JSON range). ``mangle`` picks one way to break the JSON."""
    method, template, body_field = _rule(rpc)
    try:
        as_dict: dict[str, Any] = json_format.MessageToDict(request, preserving_proto_field_name=False)
    except (ValueError, json_format.Error):
        return None
    path_fields: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        field_name = match.group(1)
        path_fields.add(field_name)
        value = getattr(request, field_name, "")
        return urllib.parse.quote(str(value) or "x", safe="/")

    path = _TEMPLATE.sub(substitute, template)
    camel = {_camel(f) for f in path_fields}
    rest = {k: v for k, v in as_dict.items() if k not in camel}
    if mangle is not None:
        _MANGLES[mangle % len(_MANGLES)](rest)
    payload: bytes | None = None
    if body_field == "*":
        payload = json.dumps(rest).encode()
    elif body_field:
        key = _camel(body_field)
        payload = json.dumps(rest.pop(key, {})).encode()
        if method == "POST" or method == "PATCH":
            query = _flatten("", rest)
            if query:
                path += "?" + urllib.parse.urlencode(query)
    else:
        query = _flatten("", rest)
        if query:
            path += "?" + urllib.parse.urlencode(query)
    return method, path, payload


def _camel(snake: str) -> str:
    head, *tail = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in tail)
