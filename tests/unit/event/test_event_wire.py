"""Cached reads answered as stored bytes: the public form hides what it must, the cached entries decode to what was
stored, and a ListEventsResponse assembled from per-event bytes is the message protobuf itself would send."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from cowatch.event.v1 import resources_pb2, service_pb2

from services.common.vocabulary import Rating
from services.event import mappers
from services.event.cache import EVENT_CODEC, LIST_CODEC, CachedEvent, CachedPage
from services.event.domain import Event, EventDetails, Film, Place, State, Visibility

NOW = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)


def event(visibility: Visibility = Visibility.PUBLIC, description: str = "Tarkovsky, 1972") -> Event:
    return Event(
        id=uuid.uuid4(),
        host_id="host-1",
        host_display_name="Anna",
        details=EventDetails(
            film=Film("tt0069293", "Solaris"),
            title="Solaris night",
            description=description,
            start_time=NOW + timedelta(days=3, microseconds=123456),
            time_zone="Europe/Berlin",
            duration=timedelta(hours=2, minutes=47),
            place=Place("Anna's living room", "Torstr. 1, 10119", "Berlin"),
            capacity=6,
            visibility=visibility,
        ),
        seats_taken=2,
        state=State.SCHEDULED,
        invite_token="secret-invite-token-0123456789ab",
        version=3,
        create_time=NOW,
        update_time=NOW,
        cancel_time=None,
        complete_time=None,
        host_rating=Rating(average=4.5, count=2),
    )


def test_public_form_hides_the_address_and_the_invite_token() -> None:
    e = event(Visibility.PRIVATE)
    data = mappers.public_event_bytes(e, "https://cowatch.test/events/x")
    msg = resources_pb2.Event.FromString(data)
    assert msg.place.address == "" and msg.address_hidden
    assert msg.invite_token == ""
    assert b"Torstr" not in data and e.invite_token.encode() not in data
    assert msg.place.city == "Berlin" and msg.seats_taken == 2 and msg.etag == e.etag


def test_cached_event_round_trips_with_its_bytes_and_a_lazily_parsed_row() -> None:
    e = event()
    public = mappers.public_event_bytes(e, "https://cowatch.test/events/x")
    back = EVENT_CODEC.decode(EVENT_CODEC.encode(CachedEvent.of(e, public)))
    assert back.public == public
    assert (back.event_id, back.listed, back.host_id, back.start_time) == (e.id, True, "host-1", e.details.start_time)
    assert back.event == e


def test_cached_page_round_trips_each_rows_bytes() -> None:
    rows = [event(description="x" * n) for n in (0, 10, 300)]  # bytes of different lengths, one > 127
    cached = [CachedEvent.of(e, mappers.public_event_bytes(e, f"https://cowatch.test/{e.id}")) for e in rows]
    back = LIST_CODEC.decode(LIST_CODEC.encode(CachedPage(cached, NOW)))
    assert back.start_from == NOW
    assert [r.public for r in back.rows] == [c.public for c in cached]
    assert [r.event_id for r in back.rows] == [e.id for e in rows]
    assert [r.event for r in back.rows] == rows


def test_list_response_assembled_from_event_bytes_is_the_serialized_message() -> None:
    events = [resources_pb2.Event(name=f"events/{n}", description="d" * (n * 70)) for n in range(5)]
    wire = [e.SerializeToString() for e in events]
    for token in ("", "next-page-token"):
        assembled = mappers.list_events_wire(wire, token)
        expected = service_pb2.ListEventsResponse(events=events, next_page_token=token)
        assert assembled == expected.SerializeToString()
        assert service_pb2.ListEventsResponse.FromString(assembled) == expected
    assert mappers.list_events_wire([], "") == b""
