"""Reminders 24 h and 1 h before the start, end to end over the real services, worker and stand-in.

Time is the injected :class:`ManualClock` shared by the services and the workers: tests move it to a reminder's
due time instead of waiting for it. "Nothing was sent" is checked after the outbox has drained (so a message
that had been queued would have arrived).
"""

from __future__ import annotations

import zoneinfo
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from cowatch.event.v1 import resources_pb2, service_pb2
from google.protobuf import field_mask_pb2

from services.common.vocabulary import local_time
from services.notification.metrics import WorkerMetrics
from services.notification.reminders import ReminderDispatcher
from services.notification.worker import Worker
from tests.support.api import Caller, new_caller
from tests.support.bookings import book, cancel, new_event
from tests.support.factories import ts
from tests.support.notify import (
    PUBLIC_BASE_URL,
    NotifyEnv,
    assert_each_key_once,
    notify_env,
    reminder_states,
    wait_all_sent,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(pg_server_url: str) -> AsyncIterator[NotifyEnv]:
    async with notify_env(pg_server_url) as e:
        yield e


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def worker(env: NotifyEnv) -> AsyncIterator[Worker]:
    async with env.worker() as w:
        yield w
    assert env.inbox.refused == 0
    assert_each_key_once(env.inbox)


def start_of(event: resources_pb2.Event) -> datetime:
    return event.start_time.ToDatetime().replace(tzinfo=UTC)


async def at(env: NotifyEnv, when: datetime) -> None:
    """Move the clock to ``when`` (never back), dispatch whatever is due then, and let the outbox drain."""
    if when > env.clock.now():
        env.clock.set(when)
    dispatcher = ReminderDispatcher(env.pool, env.clock, WorkerMetrics(), public_base_url=PUBLIC_BASE_URL)
    while await dispatcher.run_once():
        pass
    await wait_all_sent(env.pool)


def reminders(env: NotifyEnv, event: resources_pb2.Event, kind: str) -> dict[str, dict[str, object]]:
    """{recipient id: params} of the delivered reminders of one kind for ``event``."""
    template = {"24H": "reminder_24h", "1H": "reminder_1h"}[kind]
    out = {}
    for d in env.inbox.find(template, event=event.name):
        (user,) = d.user_ids
        assert user not in out, f"two {kind} reminders for {user}"
        out[user] = d.params
    return out


async def guests_book(env: NotifyEnv, event: resources_pb2.Event, *guests: Caller) -> list[str]:
    names = []
    for g in guests:
        names.append((await env.bookings.CreateBooking(book(event, 1), metadata=g.metadata)).name)
    return names


async def test_host_and_every_confirmed_guest_get_24h_and_1h_reminders_once(env: NotifyEnv, worker: Worker):
    host, a, b, gone = new_caller("Host"), new_caller("A"), new_caller("B"), new_caller("Gone")
    event = await new_event(env.events, env.clock, host, start_in=timedelta(days=3))
    start = start_of(event)
    *_, gone_booking = await guests_book(env, event, a, b, gone)
    await env.bookings.CancelBooking(cancel(gone_booking), metadata=gone.metadata)

    await at(env, start - timedelta(hours=24, minutes=1))
    assert reminders(env, event, "24H") == {}  # not due yet

    await at(env, start - timedelta(hours=24))
    sent = reminders(env, event, "24H")
    assert set(sent) == {host.id, a.id, b.id}  # not the guest who cancelled
    assert sent[host.id]["role"] == "HOST" and sent[a.id]["role"] == "GUEST"
    for params in sent.values():
        assert params["start_local"] == local_time(start, "Europe/Berlin")
        assert params["place_address"] == "Torstr. 1, 10119"  # host and guests may see it
        assert params["event_title"] == event.title and params["film_title"] == "Solaris"
        assert params["link"] == f"{PUBLIC_BASE_URL}/events/{event.name.split('/')[1]}"

    await at(env, start - timedelta(hours=1))
    assert set(reminders(env, event, "1H")) == {host.id, a.id, b.id}
    await at(env, start - timedelta(minutes=30))  # more rounds send nothing again
    assert len(env.inbox.find(event=event.name, key_prefix="reminder/")) == 6
    states = await reminder_states(env.pool, event.name)
    assert {s for s, _ in states.values()} == {"SENT"} and len(states) == 6


async def test_a_reschedule_moves_the_reminders(env: NotifyEnv, worker: Worker):
    host, guest = new_caller("Host"), new_caller("Guest")
    event = await new_event(env.events, env.clock, host, start_in=timedelta(days=3))
    await guests_book(env, event, guest)
    old_start = start_of(event)
    new_start = old_start + timedelta(days=1, hours=2)
    updated = await env.events.UpdateEvent(
        service_pb2.UpdateEventRequest(
            event=resources_pb2.Event(name=event.name, start_time=ts(new_start)),
            update_mask=field_mask_pb2.FieldMask(paths=["start_time"]),
        ),
        metadata=host.metadata,
    )
    states = await reminder_states(env.pool, event.name)
    assert states[("24H", guest.id)] == ("PENDING", new_start - timedelta(hours=24))
    assert states[("1H", host.id)] == ("PENDING", new_start - timedelta(hours=1))

    await at(env, old_start - timedelta(minutes=30))  # past both old due times
    assert reminders(env, event, "24H") == {} and reminders(env, event, "1H") == {}
    await at(env, new_start - timedelta(hours=24))
    sent = reminders(env, event, "24H")
    assert set(sent) == {host.id, guest.id}
    assert sent[guest.id]["start_local"] == local_time(start_of(updated), "Europe/Berlin")


async def move(env: NotifyEnv, host: Caller, event: resources_pb2.Event, start: datetime) -> resources_pb2.Event:
    return await env.events.UpdateEvent(
        service_pb2.UpdateEventRequest(
            event=resources_pb2.Event(name=event.name, start_time=ts(start)),
            update_mask=field_mask_pb2.FieldMask(paths=["start_time"]),
        ),
        metadata=host.metadata,
    )


async def test_a_reminder_already_sent_is_rearmed_for_the_new_start_and_never_sent_late(env: NotifyEnv, worker: Worker):
    host, guest = new_caller("Host"), new_caller("Guest")
    event = await new_event(env.events, env.clock, host, start_in=timedelta(days=3))
    await guests_book(env, event, guest)
    old_start = start_of(event)
    await at(env, old_start - timedelta(hours=23))
    (first,) = env.inbox.find("reminder_24h", event=event.name, recipient=guest.id)

    # Two days later: the 24 h reminder already SENT is armed again for the new time, under a new key.
    new_start = old_start + timedelta(days=2)
    await move(env, host, event, new_start)
    states = await reminder_states(env.pool, event.name)
    assert states[("24H", guest.id)] == ("PENDING", new_start - timedelta(hours=24))
    assert states[("24H", host.id)] == ("PENDING", new_start - timedelta(hours=24))
    await at(env, new_start - timedelta(hours=24))
    got = env.inbox.find("reminder_24h", event=event.name, recipient=guest.id)
    assert len(got) == 2
    second = got[1]
    assert second.dedupe_key != first.dedupe_key
    assert second.params["start_local"] == local_time(new_start, "Europe/Berlin")
    assert first.params["start_local"] == local_time(old_start, "Europe/Berlin")

    # Moved earlier again, to 3 h from now: the new 24 h mark has passed — it is not sent late (it went out
    # already) — while the 1 h reminder follows the new start.
    now = env.clock.now()
    closer = now + timedelta(hours=3)
    await move(env, host, event, closer)
    states = await reminder_states(env.pool, event.name)
    assert states[("24H", guest.id)][0] == "SENT"
    assert states[("1H", guest.id)] == ("PENDING", closer - timedelta(hours=1))
    await at(env, closer - timedelta(hours=1))
    assert len(env.inbox.find("reminder_24h", event=event.name, recipient=guest.id)) == 2
    (one_hour,) = env.inbox.find("reminder_1h", event=event.name, recipient=guest.id)
    assert one_hour.params["start_local"] == local_time(closer, "Europe/Berlin")


async def test_cancelling_the_event_or_a_booking_drops_the_reminders(env: NotifyEnv, worker: Worker):
    host, stays, leaves = new_caller("Host"), new_caller("Stays"), new_caller("Leaves")
    event = await new_event(env.events, env.clock, host, start_in=timedelta(days=3))
    _, leaving = await guests_book(env, event, stays, leaves)
    await env.bookings.CancelBooking(cancel(leaving), metadata=leaves.metadata)
    states = await reminder_states(env.pool, event.name)
    assert {r for _, r in states} == {host.id, stays.id}  # the cancelled guest's reminders are gone

    other_host = new_caller("Other host")  # (a guest can't hold two overlapping bookings: other people)
    other = await new_event(env.events, env.clock, other_host, start_in=timedelta(days=3))
    await guests_book(env, other, new_caller("Other guest"))
    await env.events.CancelEvent(service_pb2.CancelEventRequest(name=other.name), metadata=other_host.metadata)
    assert await reminder_states(env.pool, other.name) == {}

    await at(env, start_of(event) - timedelta(hours=24))
    await at(env, start_of(event) - timedelta(hours=1))
    assert set(reminders(env, event, "24H")) == {host.id, stays.id}
    assert set(reminders(env, event, "1H")) == {host.id, stays.id}
    assert env.inbox.find(event=other.name, key_prefix="reminder/") == []


async def test_reminders_whose_time_had_passed_are_skipped_not_sent_late(env: NotifyEnv, worker: Worker):
    host, guest = new_caller("Host"), new_caller("Late booker")
    event = await new_event(env.events, env.clock, host, start_in=timedelta(hours=2))  # 24 h mark already past
    start = start_of(event)
    states = await reminder_states(env.pool, event.name)
    assert states[("24H", host.id)][0] == "SKIPPED" and states[("1H", host.id)][0] == "PENDING"

    await at(env, start - timedelta(hours=1))
    await at(env, start - timedelta(minutes=50))
    await guests_book(env, event, guest)  # both of the guest's marks are past
    states = await reminder_states(env.pool, event.name)
    assert states[("24H", guest.id)][0] == "SKIPPED" and states[("1H", guest.id)][0] == "SKIPPED"
    await at(env, start - timedelta(minutes=10))
    assert reminders(env, event, "24H") == {}
    assert set(reminders(env, event, "1H")) == {host.id}


async def test_a_worker_back_from_a_long_outage_does_not_send_stale_reminders(env: NotifyEnv, worker: Worker):
    host, guest = new_caller("Host"), new_caller("Guest")
    event = await new_event(env.events, env.clock, host, start_in=timedelta(days=3))
    await guests_book(env, event, guest)
    start = start_of(event)
    # Nobody dispatched for a whole day: now it is 30 min before the start. The 24 h reminder would be stale;
    # the 1 h one is still worth sending.
    await at(env, start - timedelta(minutes=30))
    assert reminders(env, event, "24H") == {}
    assert set(reminders(env, event, "1H")) == {host.id, guest.id}
    states = await reminder_states(env.pool, event.name)
    assert states[("24H", guest.id)][0] == "SKIPPED"

    late = await new_event(env.events, env.clock, host, start_in=timedelta(days=2))
    await at(env, start_of(late) + timedelta(minutes=5))  # after the start: nothing at all
    assert env.inbox.find(event=late.name, key_prefix="reminder/") == []


async def test_racing_workers_send_each_reminder_exactly_once(env: NotifyEnv, worker: Worker):
    host = new_caller("Busy host")
    events = []
    for i in range(12):
        e = await new_event(env.events, env.clock, host, start_in=timedelta(days=3, minutes=i))
        await guests_book(env, e, *(new_caller(f"G{i}.{j}") for j in range(3)))
        events.append(e)
    expected = 12 * 4  # host + 3 guests per event
    last_start = max(start_of(e) for e in events)
    first_start = min(start_of(e) for e in events)
    async with (
        env.worker(reminder_batch_size=3, batch_size=5) as w1,
        env.worker(reminder_batch_size=5, batch_size=7) as w2,
        env.worker(reminder_batch_size=7, batch_size=11) as w3,
    ):
        env.clock.set(last_start - timedelta(hours=24))  # every 24 h mark has passed, no 1 h mark yet
        assert env.clock.now() < first_start - timedelta(hours=1)
        for w in (w1, w2, w3, worker):
            w.wake()
        await env.inbox.wait_for(
            lambda inbox: sum(len(inbox.find("reminder_24h", event=e.name)) for e in events) >= expected, within=15
        )
        await wait_all_sent(env.pool)
        counted = sum(
            w.metrics.reminders.labels("24H", "sent")._value.get() for w in (w1, w2, w3, worker)
        )  # the module's own worker takes part too
    for e in events:
        assert len(reminders(env, e, "24H")) == 4
    rows = await env.pool.fetchval(
        "SELECT count(*) FROM notify.outbox WHERE template_id = 'reminder_24h' AND params->>'event' = ANY($1::text[])",
        [e.name for e in events],
    )
    assert rows == expected
    assert counted == expected  # each row was dispatched by exactly one worker
    assert_each_key_once(env.inbox)


def next_dst_change(zone: str, after: datetime) -> datetime:
    """The first instant after ``after`` at which ``zone``'s UTC offset changes (searched hour by hour)."""
    tz = zoneinfo.ZoneInfo(zone)
    t = after.replace(minute=0, second=0, microsecond=0)
    offset = t.astimezone(tz).utcoffset()
    while True:
        t += timedelta(hours=1)
        if t.astimezone(tz).utcoffset() != offset:
            return t


async def test_across_a_dst_change_messages_show_the_local_time_of_the_event_day(env: NotifyEnv, worker: Worker):
    zone = "Europe/Berlin"
    tz = zoneinfo.ZoneInfo(zone)
    change = next_dst_change(zone, env.clock.now() + timedelta(hours=26))
    # 20:00 local on the day after the clocks change, booked while the old offset is in force.
    day_after = (change.astimezone(tz) + timedelta(days=1)).date()
    start = datetime(day_after.year, day_after.month, day_after.day, 20, 0, tzinfo=tz).astimezone(UTC)
    assert env.clock.now().astimezone(tz).utcoffset() != start.astimezone(tz).utcoffset()
    host, guest = new_caller("Host"), new_caller("Guest")
    event = await new_event(env.events, env.clock, host, start_in=start - env.clock.now(), time_zone=zone)
    assert start_of(event) == start
    await guests_book(env, event, guest)
    abbreviation = start.astimezone(tz).tzname()  # CEST in spring, CET in autumn
    expected = f"{start.astimezone(tz):%a} {day_after.day} {start.astimezone(tz):%b %Y}, 20:00 {abbreviation} ({zone})"

    (confirmed,) = await env.inbox.wait_count(1, template_id="booking_confirmed", event=event.name)
    assert confirmed.params["start_local"] == expected  # written before the change, shows the time after it

    await at(env, start - timedelta(hours=24))  # 24 h in absolute time: 19:00 or 21:00 local the day before
    sent = reminders(env, event, "24H")
    assert set(sent) == {host.id, guest.id}
    assert sent[guest.id]["start_local"] == expected
    await at(env, start - timedelta(hours=1))
    assert reminders(env, event, "1H")[guest.id]["start_local"] == expected
