"""Pure rules: backoff, when a reminder is skipped, the request we send, and that every message we build has what
its template needs."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from services.booking import notifications as booking_messages
from services.booking.domain import BookableEvent, Booking
from services.booking.domain import State as BookingState
from services.booking.waitlist import Ended, Offer, OfferWarning
from services.common.identity import User
from services.event import notifications as event_messages
from services.event.domain import Event, EventDetails, FieldChange, Film, Place, State, Visibility
from services.notification import messages
from services.notification.client import service_config, to_request
from services.notification.outbox import Message
from services.notification.relay import backoff_delay
from services.notification.reminders import skip_reason
from services.notification.standin import Delivery, summary
from services.notification.templates import TEMPLATES, missing_params
from services.review import notifications as review_messages
from services.review.domain import Review, SubjectType
from services.review.domain_events import ReviewRevealed

START = datetime(2027, 3, 28, 18, 0, tzinfo=UTC)  # 20:00 CEST, the day the clocks went forward


# ------------------------------------------------------------------------------------------------- backoff


def test_backoff_grows_exponentially_within_jitter_and_stops_at_the_cap():
    rng = random.Random(7)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (10, 300.0), (500, 300.0)]:
        delays = [backoff_delay(failures, base=1.0, cap=300.0, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 10  # jittered: workers that failed together spread out


# ------------------------------------------------------------------------------------------------- reminders


@pytest.mark.parametrize(
    ("kind", "state", "host", "guest", "before_start", "expected"),
    [
        ("24H", "SCHEDULED", True, False, timedelta(hours=24), None),
        ("24H", "SCHEDULED", False, True, timedelta(hours=23), None),  # a little late is still useful
        ("24H", "SCHEDULED", False, True, timedelta(minutes=59), "too_late"),  # the 1 h one is due: stale
        ("1H", "SCHEDULED", False, True, timedelta(minutes=1), None),
        ("1H", "SCHEDULED", True, False, timedelta(0), "too_late"),
        ("1H", "SCHEDULED", False, False, timedelta(hours=1), "not_attending"),  # booking cancelled meanwhile
        ("1H", "CANCELLED", True, False, timedelta(hours=1), "event_not_scheduled"),
        ("1H", "COMPLETED", True, False, timedelta(hours=1), "event_not_scheduled"),
    ],
)
def test_when_a_due_reminder_is_skipped(kind, state, host, guest, before_start, expected):
    now = START - before_start
    assert (
        skip_reason(kind=kind, event_state=state, is_host=host, is_guest=guest, start_time=START, now=now) == expected
    )


# ------------------------------------------------------------------------------------------------- messages

FACTS = messages.EventFacts(
    id=uuid.UUID(int=1),
    title="Solaris night",
    film_title="Solaris",
    start_time=START,
    time_zone="Europe/Berlin",
    place_name="Anna's living room",
    place_address="Torstr. 1",
    place_city="Berlin",
    host_name="Anna",
)


def test_reminders_show_the_local_time_with_zone_and_the_full_address():
    due = START - timedelta(hours=24)
    m = messages.reminder(FACTS, "24H", "u-1", is_host=False, seats=2, link="https://x/events/1", due_time=due)
    assert m.dedupe_key == f"reminder/{FACTS.id}/24H/u-1/{due.astimezone(UTC):%Y%m%dT%H%M%SZ}"
    assert m.template_id == "reminder_24h" and list(m.recipients) == ["u-1"]
    assert m.params["start_local"] == "Sun 28 Mar 2027, 20:00 CEST (Europe/Berlin)"
    assert m.params["place_address"] == "Torstr. 1"
    assert (m.params["role"], m.params["seats"], m.params["hours_before"]) == ("GUEST", 2, 24)
    host = messages.reminder(FACTS, "1H", "u-h", is_host=True, seats=0, link="https://x/events/1", due_time=due)
    assert host.template_id == "reminder_1h" and host.params["role"] == "HOST" and "seats" not in host.params


def _event() -> Event:
    details = EventDetails(
        film=Film("tt1", "Solaris"),
        title="Solaris night",
        description="",
        start_time=START,
        time_zone="Europe/Berlin",
        duration=timedelta(hours=2),
        place=Place("Anna's", "Torstr. 1", "Berlin"),
        capacity=6,
        visibility=Visibility.PRIVATE,
    )
    return Event(
        id=uuid.UUID(int=2),
        host_id="host",
        host_display_name="Anna",
        details=details,
        seats_taken=1,
        state=State.SCHEDULED,
        invite_token="t" * 32,
        version=3,
        create_time=START - timedelta(days=9),
        update_time=START - timedelta(days=9),
    )


def _all_messages() -> Iterator[Message]:
    event = _event()
    link = "https://x/events/2"
    yield event_messages.event_changed(event, ["g"], [FieldChange("title", "a", "b")], link)
    yield event_messages.event_cancelled(event, ["g"], "", link)
    yield event_messages.invitation(event, ["f"], "hi", link, "batch")
    review = Review(uuid.uuid4(), event.id, SubjectType.HOST, "host", "g", "Gus", 4, "", 1, START, START, START)
    revealed = review_messages.review_revealed(
        ReviewRevealed(review.id, event.id, "HOST", "host", "host", review, "Solaris night"), link
    )
    assert revealed is not None and revealed.recipients == ["host"]
    yield revealed
    bookable = BookableEvent(
        id=event.id,
        host_id="host",
        host_display_name="Anna",
        title="Solaris night",
        film_title="Solaris",
        start_time=START,
        end_time=START + timedelta(hours=2),
        time_zone="Europe/Berlin",
        place_name="Anna's",
        place_address="Torstr. 1",
        place_city="Berlin",
        capacity=6,
        seats_taken=1,
        private=False,
        scheduled=True,
        invite_token="t" * 32,
    )
    booking = Booking(
        id=uuid.UUID(int=3),
        event_id=event.id,
        guest_id="g",
        seats=2,
        state=BookingState.CONFIRMED,
        event_title="Solaris night",
        event_start_time=START,
        event_end_time=START + timedelta(hours=2),
        create_time=START - timedelta(days=1),
    )
    guest = User("g", "Gustav")
    yield booking_messages.booking_confirmed(bookable, booking, guest, link)
    yield booking_messages.new_guest(bookable, booking, guest, link)
    yield booking_messages.booking_cancelled(bookable, booking, guest, link)
    entry, deadline = uuid.UUID(int=4), START - timedelta(hours=1)
    yield booking_messages.waitlist_offer(bookable, Offer(entry, "g", 2, deadline), link)
    yield booking_messages.waitlist_offer_closing(bookable, OfferWarning(entry, event.id, "g", 2, deadline), link)
    yield booking_messages.waitlist_offer_expired(bookable, Ended(entry, "g", 2), link)
    yield booking_messages.waitlist_closed(bookable, Ended(entry, "g", 2), "the event has started", link)
    for kind in ("24H", "1H"):
        yield messages.reminder(FACTS, kind, "g", is_host=False, seats=1, link=link, due_time=START)


def test_every_message_we_build_has_every_parameter_its_template_needs():
    seen = set()
    for m in _all_messages():
        params = json.loads(json.dumps(m.params, default=str))  # as the outbox stores them
        assert missing_params(m.template_id, params) == [], m.template_id
        assert len(m.dedupe_key) <= 200
        seen.add(m.template_id)
    assert seen == set(TEMPLATES)  # and the catalogue has no template nobody sends


def test_only_people_who_may_see_it_get_the_exact_address():
    with_address = {m.template_id for m in _all_messages() if "place_address" in m.params}
    assert "event_invitation" not in with_address and "event_cancelled" not in with_address
    assert {"booking_confirmed", "event_changed", "reminder_24h", "reminder_1h"} <= with_address


# ------------------------------------------------------------------------------------------------- client


def test_retries_are_for_unavailable_only():
    config = json.loads(service_config(max_attempts=3))
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "cowatch.notification.v1.NotificationService"}]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert method["retryPolicy"]["maxAttempts"] == 3


def test_requests_name_recipients_as_users_and_carry_json_params():
    request = to_request(
        dedupe_key="k", recipients=["u-1", "users/u-2"], template_id="t", params={"when": START, "n": 2}
    )
    assert list(request.recipients) == ["users/u-1", "users/u-2"]
    assert request.params["when"] == str(START) and request.params["n"] == 2


def test_the_standin_logs_a_readable_line_without_the_street_address():
    m = event_messages.event_changed(_event(), ["g"], [FieldChange("title", "Old", "New")], "https://x/events/2")
    d = Delivery("n1", m.dedupe_key, m.template_id, ("users/g",), m.params, "", START)
    line = summary(d)
    assert line.startswith("event_changed -> users/g: ")
    assert "Sun 28 Mar 2027, 20:00 CEST (Europe/Berlin)" in line and "title: Old -> New" in line
    assert "Torstr. 1" not in line  # the place is its name and city
