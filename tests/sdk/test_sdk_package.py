"""The SDK as a package: it imports nothing of the services or of their generated code, retries exactly the safe
methods, and picks exception classes by reason before status code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cowatch_client import errors
from cowatch_client.options import RetryPolicy, retried_methods, service_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_sdk_imports_only_its_own_generated_code():
    code = (
        "import sys, cowatch_client, cowatch_client.types, cowatch_client.aio; "
        "print([m for m in sys.modules if m.split('.')[0] in ('cowatch', 'services', 'tests')])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "sdk" / "python" / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert (ROOT / "sdk" / "python" / "src" / "cowatch_client" / "py.typed").exists()


def test_only_reads_and_writes_with_a_request_id_are_retried():
    retried = {f"{service.rsplit('.', 1)[1]}/{method}" for service, method in retried_methods()}
    assert retried == {
        "EventService/CreateEvent",
        "EventService/GetEvent",
        "EventService/ExportEventCalendar",
        "EventService/GetCalendar",
        "EventService/ListEvents",
        "EventService/CancelEvent",
        "EventService/ListEventGuests",
        "EventService/SendInvitations",
        "BookingService/CreateBooking",
        "BookingService/GetBooking",
        "BookingService/ListBookings",
        "BookingService/CancelBooking",
        "BookingService/JoinWaitlist",
        "BookingService/GetWaitlistEntry",
        "BookingService/ListWaitlist",
        "BookingService/LeaveWaitlist",
        "BookingService/ClaimOffer",
        "BookingService/DeclineOffer",
        "ReviewService/CreateReview",
        "ReviewService/ListReviews",
        "ReviewService/GetUserRating",
        "ReviewService/GetHostProfile",
        "ReviewService/ListHeldEvents",
    }  # not UpdateEvent, CompleteEvent, RotateInviteToken, RotateCalendarToken, UpdateReview, DeleteReview,
    # MarkAttendance
    (config,) = json.loads(service_config(RetryPolicy()))["methodConfig"]
    assert config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert json.loads(service_config(RetryPolicy(max_attempts=1))) == {"methodConfig": []}


@pytest.mark.parametrize(
    ("reason", "code", "expected"),
    [
        ("EVENT_SOLD_OUT", grpc.StatusCode.RESOURCE_EXHAUSTED, errors.SoldOut),
        ("EVENT_SOLD_OUT", grpc.StatusCode.FAILED_PRECONDITION, errors.SoldOut),
        ("SOME_NEW_REASON", grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        ("SOME_NEW_REASON", grpc.StatusCode.NOT_FOUND, errors.NotFound),
        ("", grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        ("", grpc.StatusCode.UNKNOWN, errors.Internal),
    ],
)
def test_the_class_comes_from_the_reason_then_the_code(reason, code, expected):
    assert errors.error_class(reason, code) is expected
