"""EventService host actions: update, cancel, complete, guest list, invitations, invite-token rotation."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest
from cowatch.event.v1 import resources_pb2, service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from google.protobuf import field_mask_pb2

from services.common.clock import ManualClock
from tests.support.api import Caller, expect_error, new_caller
from tests.support.factories import book_directly, create_request, known_users, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def _id(name: str) -> uuid.UUID:
    return uuid.UUID(name.split("/")[1])


async def _create(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, host: Caller, **kwargs: Any
) -> resources_pb2.Event:
    return await events.CreateEvent(create_request(clock.now(), **kwargs), metadata=host.metadata)


def _update(event: resources_pb2.Event, *paths: str, etag: str = "") -> service_pb2.UpdateEventRequest:
    patch = resources_pb2.Event(name=event.name, etag=etag)
    return service_pb2.UpdateEventRequest(event=patch, update_mask=field_mask_pb2.FieldMask(paths=list(paths)))


async def _outbox(db_pool, template: str, event_name: str) -> list[dict[str, Any]]:
    rows = await db_pool.fetch(
        "SELECT recipients, params, dedupe_key FROM notify.outbox WHERE template_id = $1 AND params->>'event' = $2 "
        "ORDER BY id",
        template,
        event_name,
    )
    return [
        {"recipients": list(r["recipients"]), "params": json.loads(r["params"]), "key": r["dedupe_key"]} for r in rows
    ]


# ---------------------------------------------------------------------------------------------- update


async def test_host_updates_with_mask_and_guests_are_told_old_and_new(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool
):
    host, guest = new_caller("Host"), new_caller("Guest")
    event = await _create(events, clock, host)
    await book_directly(db_pool, event.name, guest)
    request = _update(event, "title", "place.city", etag=event.etag)
    request.event.title = "Solaris, director's cut"
    request.event.place.city = "Potsdam"
    request.event.description = "ignored: not in the mask"
    updated = await events.UpdateEvent(request, metadata=host.metadata)
    assert updated.title == "Solaris, director's cut"
    assert updated.place.city == "Potsdam"
    assert updated.place.name == event.place.name  # untouched sub-field kept
    assert updated.description == event.description
    assert updated.etag != event.etag

    (msg,) = await _outbox(db_pool, "event_changed", event.name)
    assert msg["recipients"] == [guest.id]
    changes = {c["field"]: (c["old"], c["new"]) for c in msg["params"]["changes"]}
    assert changes["title"] == ("Solaris night", "Solaris, director's cut")
    assert "Berlin" in changes["place"][0] and "Potsdam" in changes["place"][1]


async def test_empty_mask_updates_populated_fields_only(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    event = await _create(events, clock, host)
    request = _update(event)
    request.event.capacity = 9
    updated = await events.UpdateEvent(request, metadata=host.metadata)
    assert updated.capacity == 9
    assert updated.title == event.title and updated.film == event.film and updated.place == event.place


async def test_reschedule_moves_reminders_and_reports_local_times(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool
):
    host, guest = new_caller(), new_caller()
    event = await _create(events, clock, host, start_in=timedelta(days=4))
    await book_directly(db_pool, event.name, guest)
    new_start = clock.now() + timedelta(days=6)
    request = _update(event, "start_time")
    request.event.start_time.CopyFrom(ts(new_start))
    await events.UpdateEvent(request, metadata=host.metadata)
    rows = await db_pool.fetch(
        "SELECT kind, due_time, state FROM notify.reminders WHERE event_id = $1 AND recipient_id = $2",
        _id(event.name),
        host.id,
    )
    due = {r["kind"]: r["due_time"] for r in rows}
    # Timestamps round-trip through protobuf at microsecond precision.
    assert abs(due["24H"] - (new_start - timedelta(hours=24))) < timedelta(milliseconds=1)
    assert abs(due["1H"] - (new_start - timedelta(hours=1))) < timedelta(milliseconds=1)
    assert {r["state"] for r in rows} == {"PENDING"}
    (msg,) = await _outbox(db_pool, "event_changed", event.name)
    old, new = {c["field"]: (c["old"], c["new"]) for c in msg["params"]["changes"]}["start_time"]
    assert "(Europe/Berlin)" in old and "(Europe/Berlin)" in new


async def test_only_the_host_may_update(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    public = await _create(events, clock, host)
    private = await _create(events, clock, host, private=True)
    for event, code, reason in (
        (public, grpc.StatusCode.PERMISSION_DENIED, "NOT_EVENT_HOST"),
        (private, grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND"),  # existence not revealed
    ):
        request = _update(event, "title")
        request.event.title = "Hijacked"
        err = await expect_error(events.UpdateEvent(request, metadata=new_caller().metadata))
        assert (err.code, err.reason) == (code, reason)
    err = await expect_error(events.UpdateEvent(_update(public, "title")))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED


async def test_stale_etag_is_aborted(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    event = await _create(events, clock, host)
    first = _update(event, "title", etag=event.etag)
    first.event.title = "First"
    await events.UpdateEvent(first, metadata=host.metadata)
    second = _update(event, "title", etag=event.etag)
    second.event.title = "Second"
    err = await expect_error(events.UpdateEvent(second, metadata=host.metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    bad = _update(event, "title", etag="W/abc")
    err = await expect_error(events.UpdateEvent(bad, metadata=host.metadata))
    assert err.code == INVALID and "etag" in err.fields


async def test_capacity_never_below_seats_taken(events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool):
    host = new_caller()
    event = await _create(events, clock, host, capacity=5)
    await book_directly(db_pool, event.name, new_caller(), seats=3)
    request = _update(event, "capacity")
    request.event.capacity = 2
    err = await expect_error(events.UpdateEvent(request, metadata=host.metadata))
    assert (err.code, err.reason) == (PRECONDITION, "CAPACITY_BELOW_SEATS_TAKEN")
    assert err.metadata["seats_taken"] == "3"
    request.event.capacity = 3
    assert (await events.UpdateEvent(request, metadata=host.metadata)).seats_available == 0


@pytest.mark.parametrize(
    ("paths", "edit", "field"),
    [
        (["seats_taken"], None, "update_mask"),
        (["host"], None, "update_mask"),
        (["name"], None, "update_mask"),
        (["start_time"], "past", "event.start_time"),
        (["start_time"], "missing", "event.start_time"),
        (["visibility"], None, "event.visibility"),
        (["capacity"], None, "event.capacity"),
        (["title"], None, "event.title"),
        (["time_zone"], "zone", "event.time_zone"),
    ],
)
async def test_bad_updates_name_the_field(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, paths: list[str], edit: str | None, field: str
):
    host = new_caller()
    event = await _create(events, clock, host)
    request = _update(event, *paths)
    if edit == "past":
        request.event.start_time.CopyFrom(ts(clock.now() - timedelta(hours=1)))
    elif edit == "zone":
        request.event.time_zone = "Europe/Atlantis"
    err = await expect_error(events.UpdateEvent(request, metadata=host.metadata))
    assert err.code == INVALID
    assert field in err.fields, err.fields


async def test_malformed_event_name_on_update(events: event_grpc.EventServiceAsyncStub):
    request = service_pb2.UpdateEventRequest(event=resources_pb2.Event(name="events/nope", title="x"))
    err = await expect_error(events.UpdateEvent(request, metadata=new_caller().metadata))
    assert err.code == INVALID and "event.name" in err.fields


# ---------------------------------------------------------------------------------------------- cancel


async def test_cancel_cascades_to_bookings_reminders_and_guests(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool
):
    host, g1, g2 = new_caller(), new_caller(), new_caller()
    event = await _create(events, clock, host)
    await book_directly(db_pool, event.name, g1, 2)
    await book_directly(db_pool, event.name, g2, 1)
    await db_pool.execute(
        "INSERT INTO notify.reminders (event_id, kind, recipient_id, due_time) "
        "VALUES ($1, '24H', $2, now() + interval '1 day')",
        _id(event.name),
        g1.id,
    )
    request = service_pb2.CancelEventRequest(name=event.name, reason="Projector broke", request_id=str(uuid.uuid4()))
    cancelled = await events.CancelEvent(request, metadata=host.metadata)
    assert cancelled.state == resources_pb2.Event.CANCELLED
    assert cancelled.seats_taken == 0
    assert cancelled.HasField("cancel_time")
    states = await db_pool.fetch("SELECT state FROM booking.bookings WHERE event_id = $1", _id(event.name))
    assert [r["state"] for r in states] == ["CANCELLED", "CANCELLED"]
    assert await db_pool.fetchval("SELECT count(*) FROM notify.reminders WHERE event_id = $1", _id(event.name)) == 0
    (msg,) = await _outbox(db_pool, "event_cancelled", event.name)
    assert sorted(msg["recipients"]) == sorted([g1.id, g2.id])
    assert msg["params"]["reason"] == "Projector broke"
    # A retry (same request id) and a plain second cancel change nothing and notify nobody again.
    assert (await events.CancelEvent(request, metadata=host.metadata)).state == resources_pb2.Event.CANCELLED
    again = await events.CancelEvent(service_pb2.CancelEventRequest(name=event.name), metadata=host.metadata)
    assert again.etag == cancelled.etag
    assert len(await _outbox(db_pool, "event_cancelled", event.name)) == 1
    # A cancelled event can't be edited.
    upd = _update(cancelled, "title")
    upd.event.title = "Back on"
    err = await expect_error(events.UpdateEvent(upd, metadata=host.metadata))
    assert (err.code, err.reason) == (PRECONDITION, "EVENT_NOT_EDITABLE")


async def test_only_the_host_may_cancel(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    event = await _create(events, clock, new_caller())
    err = await expect_error(
        events.CancelEvent(service_pb2.CancelEventRequest(name=event.name), metadata=new_caller().metadata)
    )
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_EVENT_HOST")


async def test_cancel_reason_is_bounded(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    event = await _create(events, clock, host)
    err = await expect_error(
        events.CancelEvent(service_pb2.CancelEventRequest(name=event.name, reason="r" * 1001), metadata=host.metadata)
    )
    assert err.code == INVALID and "reason" in err.fields


# ---------------------------------------------------------------------------------------------- complete


async def test_complete_only_after_the_end_and_records_participants(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool
):
    host, guest, leaver = new_caller(), new_caller(), new_caller()
    event = await _create(events, clock, host, start_in=timedelta(hours=2), minutes=90)
    await book_directly(db_pool, event.name, guest)
    leaver_booking = await book_directly(db_pool, event.name, leaver)
    await db_pool.execute(
        "UPDATE booking.bookings SET state = 'CANCELLED', cancel_time = now() WHERE id = $1", leaver_booking
    )
    complete = service_pb2.CompleteEventRequest(name=event.name)
    err = await expect_error(events.CompleteEvent(complete, metadata=host.metadata))
    assert (err.code, err.reason) == (PRECONDITION, "EVENT_NOT_ENDED")

    clock.advance(hours=4)
    err = await expect_error(events.CompleteEvent(complete, metadata=guest.metadata))
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_EVENT_HOST")
    held = await events.CompleteEvent(complete, metadata=host.metadata)
    assert held.state == resources_pb2.Event.COMPLETED and held.HasField("complete_time")
    rows = await db_pool.fetch("SELECT user_id, role FROM event.participants WHERE event_id = $1", _id(event.name))
    assert {(r["user_id"], r["role"]) for r in rows} == {(host.id, "HOST"), (guest.id, "GUEST")}
    # Idempotent; and a held event can't be cancelled.
    assert (await events.CompleteEvent(complete, metadata=host.metadata)).etag == held.etag
    err = await expect_error(
        events.CancelEvent(service_pb2.CancelEventRequest(name=event.name), metadata=host.metadata)
    )
    assert (err.code, err.reason) == (PRECONDITION, "EVENT_NOT_CANCELLABLE")


async def test_a_cancelled_event_cannot_be_completed(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    event = await _create(events, clock, host, start_in=timedelta(hours=1), minutes=30)
    await events.CancelEvent(service_pb2.CancelEventRequest(name=event.name), metadata=host.metadata)
    clock.advance(hours=2)
    err = await expect_error(
        events.CompleteEvent(service_pb2.CompleteEventRequest(name=event.name), metadata=host.metadata)
    )
    assert (err.code, err.reason) == (PRECONDITION, "EVENT_NOT_COMPLETABLE")


async def test_started_event_cannot_be_edited(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    event = await _create(events, clock, host, start_in=timedelta(minutes=30))
    clock.advance(hours=1)
    request = _update(event, "title")
    request.event.title = "Too late"
    err = await expect_error(events.UpdateEvent(request, metadata=host.metadata))
    assert (err.code, err.reason) == (PRECONDITION, "EVENT_NOT_EDITABLE")


# ---------------------------------------------------------------------------------------------- guests


async def test_guest_list_for_the_host_only(events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool):
    host = new_caller()
    event = await _create(events, clock, host, capacity=10)
    guests = [new_caller(f"Guest {i}") for i in range(5)]
    for i, g in enumerate(guests):
        await book_directly(db_pool, event.name, g, seats=1 + i % 2)
    seen = []
    token = ""
    while True:
        page = await events.ListEventGuests(
            service_pb2.ListEventGuestsRequest(parent=event.name, page_size=2, page_token=token), metadata=host.metadata
        )
        seen += list(page.guests)
        token = page.next_page_token
        if not token:
            break
    assert [g.display_name for g in seen] == [f"Guest {i}" for i in range(5)]
    assert [g.seats for g in seen] == [1, 2, 1, 2, 1]
    assert all(g.user.startswith("users/") and g.booking.startswith("bookings/") for g in seen)
    assert all(g.guest_rating.count == 0 for g in seen)

    err = await expect_error(
        events.ListEventGuests(service_pb2.ListEventGuestsRequest(parent=event.name), metadata=guests[0].metadata)
    )
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_EVENT_HOST")
    err = await expect_error(events.ListEventGuests(service_pb2.ListEventGuestsRequest(parent=event.name)))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    err = await expect_error(
        events.ListEventGuests(
            service_pb2.ListEventGuestsRequest(parent="events/x", page_size=-2), metadata=host.metadata
        )
    )
    assert err.code == INVALID


# ---------------------------------------------------------------------------------------------- invitations


async def test_invitations_reach_the_outbox_once(events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool):
    host = new_caller("Host")
    event = await _create(events, clock, host, private=True)
    friends = [new_caller() for _ in range(3)]
    await known_users(db_pool, *friends)
    request = service_pb2.SendInvitationsRequest(
        name=event.name, users=[f.resource for f in friends], message="Come!", request_id=str(uuid.uuid4())
    )
    result = await events.SendInvitations(request, metadata=host.metadata)
    assert list(result.users) == [f.resource for f in friends]
    assert f"?invite={event.invite_token}" in result.share_link
    await events.SendInvitations(request, metadata=host.metadata)  # retry: no second mail
    (msg,) = await _outbox(db_pool, "event_invitation", event.name)
    assert msg["recipients"] == [f.id for f in friends]
    assert msg["params"]["message"] == "Come!"
    assert "place_address" not in msg["params"]
    assert msg["params"]["link"] == result.share_link


@pytest.mark.parametrize(
    ("users", "field"),
    [
        ([], "users"),
        (["bob"], "users[0]"),
        (["users/a", "users/a"], "users"),
        ([f"users/u{i}" for i in range(51)], "users"),
    ],
)
async def test_bad_invitation_lists(events: event_grpc.EventServiceAsyncStub, clock: ManualClock, users, field):
    host = new_caller()
    event = await _create(events, clock, host)
    err = await expect_error(
        events.SendInvitations(service_pb2.SendInvitationsRequest(name=event.name, users=users), metadata=host.metadata)
    )
    assert err.code == INVALID and field in err.fields


async def test_invitations_rules(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    event = await _create(events, clock, host)
    err = await expect_error(
        events.SendInvitations(
            service_pb2.SendInvitationsRequest(name=event.name, users=["users/x"]), metadata=new_caller().metadata
        )
    )
    assert err.reason == "NOT_EVENT_HOST"
    err = await expect_error(
        events.SendInvitations(
            service_pb2.SendInvitationsRequest(name=event.name, users=[host.resource]), metadata=host.metadata
        )
    )
    assert err.code == INVALID and "users" in err.fields
    await events.CancelEvent(service_pb2.CancelEventRequest(name=event.name), metadata=host.metadata)
    err = await expect_error(
        events.SendInvitations(
            service_pb2.SendInvitationsRequest(name=event.name, users=["users/x"]), metadata=host.metadata
        )
    )
    assert (err.code, err.reason) == (PRECONDITION, "EVENT_NOT_OPEN")


# ---------------------------------------------------------------------------------------------- invite token


async def test_rotating_the_invite_token_breaks_old_links(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host, friend = new_caller(), new_caller()
    event = await _create(events, clock, host, private=True)
    rotated = await events.RotateInviteToken(
        service_pb2.RotateInviteTokenRequest(name=event.name), metadata=host.metadata
    )
    assert rotated.invite_token and rotated.invite_token != event.invite_token
    err = await expect_error(
        events.GetEvent(
            service_pb2.GetEventRequest(name=event.name, invite_token=event.invite_token), metadata=friend.metadata
        )
    )
    assert err.code == grpc.StatusCode.NOT_FOUND
    ok = await events.GetEvent(
        service_pb2.GetEventRequest(name=event.name, invite_token=rotated.invite_token), metadata=friend.metadata
    )
    assert ok.name == event.name
    err = await expect_error(
        events.RotateInviteToken(service_pb2.RotateInviteTokenRequest(name=event.name), metadata=friend.metadata)
    )
    assert err.code == grpc.StatusCode.NOT_FOUND  # a stranger doesn't learn the private event exists


async def test_public_events_have_no_token_to_rotate(events: event_grpc.EventServiceAsyncStub, clock: ManualClock):
    host = new_caller()
    event = await _create(events, clock, host)
    err = await expect_error(
        events.RotateInviteToken(service_pb2.RotateInviteTokenRequest(name=event.name), metadata=host.metadata)
    )
    assert (err.code, err.reason) == (PRECONDITION, "EVENT_NOT_PRIVATE")


async def test_invitations_go_only_to_users_cowatch_knows(
    events: event_grpc.EventServiceAsyncStub, clock: ManualClock, db_pool
):
    host, friend, stranger = new_caller("Host"), new_caller(), new_caller()
    await known_users(db_pool, friend)
    event = await _create(events, clock, host, private=True)
    request = service_pb2.SendInvitationsRequest(
        name=event.name, users=[friend.resource, "users/made-up", stranger.resource]
    )
    err = await expect_error(events.SendInvitations(request, metadata=host.metadata))
    assert (err.code, err.reason) == (INVALID, "UNKNOWN_USER")
    assert set(err.fields) == {"users[1]", "users[2]"}
    assert await _outbox(db_pool, "event_invitation", event.name) == []


async def test_invitation_quota_per_host_holds_across_replicas(database_url: str, clock: ManualClock, db_pool):
    from services.event.app import EventSettings
    from tests.support.servers import event_server

    host = new_caller("Quota Host")
    friends = [new_caller() for _ in range(4)]
    await known_users(db_pool, *friends)
    async with (
        event_server(database_url, clock=clock, settings_cls=EventSettings, invitations_per_day=5) as (_, one),
        event_server(database_url, clock=clock, settings_cls=EventSettings, invitations_per_day=5) as (_, two),
    ):
        event = await one.CreateEvent(create_request(clock.now(), private=True), metadata=host.metadata)

        def invite(*who: Caller) -> service_pb2.SendInvitationsRequest:
            return service_pb2.SendInvitationsRequest(name=event.name, users=[w.resource for w in who])

        await one.SendInvitations(invite(*friends[:3]), metadata=host.metadata)  # 3 of 5
        await two.SendInvitations(invite(friends[3]), metadata=host.metadata)  # 4 of 5, the other replica
        err = await expect_error(two.SendInvitations(invite(*friends[:2]), metadata=host.metadata))  # would be 6
        assert (err.code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "INVITATION_QUOTA_EXCEEDED")
        assert err.metadata["limit"] == "5"
        await one.SendInvitations(invite(friends[0]), metadata=host.metadata)  # exactly 5: still fine
        err = await expect_error(one.SendInvitations(invite(friends[1]), metadata=host.metadata))
        assert err.reason == "INVITATION_QUOTA_EXCEEDED"
        before = clock.now()
        clock.advance(timedelta(days=1))
        try:
            await two.SendInvitations(invite(friends[1]), metadata=host.metadata)  # a new day
        finally:
            clock.set(before)
    assert len(await _outbox(db_pool, "event_invitation", event.name)) == 4
