"""Every message the spec promises, end to end: real EventService and BookingService servers → outbox → worker →
the notification stand-in over real gRPC. Each reaches exactly the right people, with the parameters a mail
template needs (the stand-in refuses a message that lacks one of its template's parameters)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, timedelta

import pytest
import pytest_asyncio
from cowatch.event.v1 import resources_pb2, service_pb2
from google.protobuf import field_mask_pb2

from services.common.vocabulary import local_time
from services.notification.standin import Delivery
from services.notification.worker import Worker
from tests.support.api import Caller, new_caller
from tests.support.bookings import book, cancel, new_event
from tests.support.factories import known_users, ts
from tests.support.notify import NotifyEnv, assert_each_key_once, notify_env

pytestmark = pytest.mark.asyncio(loop_scope="session")

ADDRESS = "Torstr. 1, 10119"  # tests.support.factories.event_msg's place


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(pg_server_url: str) -> AsyncIterator[NotifyEnv]:
    async with notify_env(pg_server_url) as e:
        yield e


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def worker(env: NotifyEnv) -> AsyncIterator[Worker]:
    async with env.worker() as w:
        yield w
    assert env.inbox.refused == 0  # no message ever lacked a parameter its template needs
    assert_each_key_once(env.inbox)


async def one(env: NotifyEnv, template: str, event: str, recipient: str | None = None) -> Delivery:
    (d,) = await env.inbox.wait_count(1, template_id=template, event=event, recipient=recipient)
    return d


def assert_event_params(d: Delivery, event: resources_pb2.Event, *, address: bool) -> None:
    p = d.params
    assert p["event"] == event.name
    assert p["event_title"] == event.title
    assert p["film_title"] == event.film.title
    start = event.start_time.ToDatetime().replace(tzinfo=UTC)
    assert p["start_local"] == local_time(start, event.time_zone)  # e.g. "Thu 3 Dec 2026, 21:48 CET (Europe/Berlin)"
    assert p["time_zone"] == event.time_zone
    assert p["place_name"] == event.place.name and p["place_city"] == event.place.city
    assert p["link"] == f"https://cowatch.test/events/{event.name.split('/')[1]}"
    assert ("place_address" in p) is address
    if address:
        assert p["place_address"] == ADDRESS


async def test_booking_confirmed_to_the_guest_and_new_guest_to_the_host(env: NotifyEnv, worker: Worker):
    host, guest = new_caller("Hanna Host"), new_caller("Gustav Guest")
    event = await new_event(env.events, env.clock, host)
    booking = await env.bookings.CreateBooking(book(event, 2), metadata=guest.metadata)

    confirmed = await one(env, "booking_confirmed", event.name)
    assert confirmed.user_ids == (guest.id,)
    assert_event_params(confirmed, event, address=True)  # a seat holder may see the exact address
    assert confirmed.params["seats"] == 2
    assert confirmed.params["booking"] == booking.name

    new_guest = await one(env, "booking_new_guest", event.name)
    assert new_guest.user_ids == (host.id,)
    assert new_guest.params["guest_name"] == "Gustav Guest"
    assert new_guest.params["seats"] == 2
    assert_event_params(new_guest, event, address=True)


async def test_booking_cancelled_tells_the_host(env: NotifyEnv, worker: Worker):
    host, guest = new_caller("Host"), new_caller("Cancelling Carla")
    event = await new_event(env.events, env.clock, host)
    booking = await env.bookings.CreateBooking(book(event, 1), metadata=guest.metadata)
    await env.bookings.CancelBooking(cancel(booking), metadata=guest.metadata)
    d = await one(env, "booking_cancelled", event.name)
    assert d.user_ids == (host.id,)
    assert d.params["guest_name"] == "Cancelling Carla"
    assert d.params["seats"] == 1
    assert_event_params(d, event, address=True)


async def test_event_changed_tells_confirmed_guests_old_and_new_of_each_changed_field(env: NotifyEnv, worker: Worker):
    host, staying, leaving = new_caller("Host"), new_caller("Staying"), new_caller("Leaving")
    event = await new_event(env.events, env.clock, host)
    await env.bookings.CreateBooking(book(event, 1), metadata=staying.metadata)
    gone = await env.bookings.CreateBooking(book(event, 1), metadata=leaving.metadata)
    await env.bookings.CancelBooking(cancel(gone), metadata=leaving.metadata)

    old_start = event.start_time.ToDatetime().replace(tzinfo=UTC)
    new_start = old_start + timedelta(hours=2)
    patch = resources_pb2.Event(name=event.name, title="Solaris (1972), restored", start_time=ts(new_start))
    updated = await env.events.UpdateEvent(
        service_pb2.UpdateEventRequest(
            event=patch, update_mask=field_mask_pb2.FieldMask(paths=["title", "start_time"])
        ),
        metadata=host.metadata,
    )
    d = await one(env, "event_changed", event.name)
    assert d.user_ids == (staying.id,)  # not the host, not the guest who cancelled
    assert_event_params(d, updated, address=True)
    changes = {c["field"]: (c["old"], c["new"]) for c in d.params["changes"]}
    assert changes == {
        "title": ("Solaris night", "Solaris (1972), restored"),
        "start_time": (local_time(old_start, "Europe/Berlin"), local_time(new_start, "Europe/Berlin")),
    }


async def test_event_cancelled_tells_every_guest_with_the_reason(env: NotifyEnv, worker: Worker):
    host, guests = new_caller("Host"), [new_caller("G1"), new_caller("G2")]
    event = await new_event(env.events, env.clock, host)
    for g in guests:
        await env.bookings.CreateBooking(book(event, 1), metadata=g.metadata)
    await env.events.CancelEvent(
        service_pb2.CancelEventRequest(name=event.name, reason="The projector broke"), metadata=host.metadata
    )
    d = await one(env, "event_cancelled", event.name)
    assert set(d.user_ids) == {g.id for g in guests}
    assert d.params["reason"] == "The projector broke"
    assert_event_params(d, event, address=False)  # no booking any more: the city only


async def invite(env: NotifyEnv, host: Caller, event: resources_pb2.Event, users: list[Caller], note: str) -> None:
    await known_users(env.pool, *users)
    await env.events.SendInvitations(
        service_pb2.SendInvitationsRequest(name=event.name, users=[u.resource for u in users], message=note),
        metadata=host.metadata,
    )


async def test_invitations_reach_the_invited_with_the_private_link(env: NotifyEnv, worker: Worker):
    host, friends = new_caller("Hanna Host"), [new_caller("F1"), new_caller("F2")]
    event = await new_event(env.events, env.clock, host, private=True)
    await invite(env, host, event, friends, "Come over!")
    d = await one(env, "event_invitation", event.name)
    assert set(d.user_ids) == {f.id for f in friends}
    assert d.params["host_name"] == "Hanna Host"
    assert d.params["message"] == "Come over!"
    assert d.params["link"].endswith(f"?invite={event.invite_token}")  # the link that lets them in
    assert "place_address" not in d.params  # not booked yet: the city only


async def test_after_rotating_the_invite_token_invitations_carry_the_new_link(env: NotifyEnv, worker: Worker):
    # Rotation itself mails nobody: it exists to make leaked links useless, so re-sending links would defeat it.
    host, early, late = new_caller("Host"), new_caller("Early"), new_caller("Late")
    event = await new_event(env.events, env.clock, host, private=True)
    await invite(env, host, event, [early], "first")
    first = await one(env, "event_invitation", event.name, early.id)
    rotated = await env.events.RotateInviteToken(
        service_pb2.RotateInviteTokenRequest(name=event.name), metadata=host.metadata
    )
    assert rotated.invite_token != event.invite_token
    await invite(env, host, event, [late], "second")
    second = await one(env, "event_invitation", event.name, late.id)
    assert first.params["link"].endswith(f"?invite={event.invite_token}")
    assert second.params["link"].endswith(f"?invite={rotated.invite_token}")
    assert len(env.inbox.find(event=event.name)) == 2  # the two invitations, nothing about the rotation
