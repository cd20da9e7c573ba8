"""The request text rule (services/common/text.py) and the cap on field violations (services/common/grpc_errors)."""

from __future__ import annotations

import grpc
import pytest
from cowatch.event.v1 import resources_pb2, service_pb2
from cowatch.review.v1 import resources_pb2 as review_resources_pb2
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2

from services.common.errors import InvalidArgument
from services.common.grpc_errors import MAX_FIELD_VIOLATIONS, to_rpc_status, to_status_proto
from services.common.text import FREE_TEXT_FIELDS, MAX_LENGTH, check_request, text_problem


def test_every_free_text_field_exists():
    assert review_resources_pb2.Review.DESCRIPTOR  # registers the review messages
    pool = descriptor_pool.Default()
    for name in FREE_TEXT_FIELDS:
        message, _, field = name.rpartition(".")
        assert field in pool.FindMessageTypeByName(message).fields_by_name, name


@pytest.mark.parametrize(
    ("value", "free", "ok"),
    [
        ("Solaris", False, True),
        ("Über Straße 日本 🎬", False, True),
        ("a\x00b", False, False),
        ("a\x00b", True, False),
        ("two\nlines", False, False),
        ("two\nlines\ttab", True, True),
        ("del\x7f", True, False),
        ("c1\x85", True, False),
        ("\ufdd0", False, False),
        ("x" * MAX_LENGTH, False, True),
        ("x" * (MAX_LENGTH + 1), False, False),
    ],
)
def test_text_problem(value: str, free: bool, ok: bool):
    assert (text_problem(value, free_text=free) is None) is ok


def test_check_request_names_nested_and_repeated_fields():
    request = service_pb2.SendInvitationsRequest(name="events/x\x00", users=["users/a", "users/\x01"], message="hi\n")
    assert [f for f, _ in check_request(request).items] == ["name", "users[1]"]
    update = service_pb2.UpdateEventRequest(event=resources_pb2.Event(place=resources_pb2.Place(city="B\x00")))
    assert [f for f, _ in check_request(update).items] == ["event.place.city"]


def test_violations_are_capped_with_a_count_of_the_rest():
    exc = InvalidArgument(
        "INVALID_ARGUMENT", "x" * 100_000, field_violations=[(f"users[{i}]", "bad") for i in range(10_000)]
    )
    status = to_status_proto(exc)
    bad = error_details_pb2.BadRequest()
    info = error_details_pb2.ErrorInfo()
    for detail in status.details:
        if detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
        elif detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
    assert len(bad.field_violations) == MAX_FIELD_VIOLATIONS
    assert info.metadata["omitted_violations"] == str(10_000 - MAX_FIELD_VIOLATIONS)
    rpc = to_rpc_status(exc)
    assert rpc.code is grpc.StatusCode.INVALID_ARGUMENT
    assert sum(len(k) + len(v) for k, v in rpc.trailing_metadata) < 4096
