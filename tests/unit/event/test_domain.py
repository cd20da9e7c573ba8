"""Event rules as pure functions: no I/O, no gRPC."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.common import names
from services.common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.common.identity import User
from services.event import domain
from services.event.domain import Event, EventDetails, Film, Place, State, Visibility

NOW = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
HOST = User("host-1", "Anna")
GUEST = User("guest-1", "Ben")


def details(**overrides: object) -> EventDetails:
    base = EventDetails(
        film=Film("tt0069293", "Solaris"),
        title="Solaris night",
        description="",
        start_time=NOW + timedelta(days=2),
        time_zone="Europe/Berlin",
        duration=timedelta(minutes=165),
        place=Place("Anna's", "Torstr. 1", "Berlin"),
        capacity=6,
        visibility=Visibility.PUBLIC,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def event(**overrides: object) -> Event:
    base = Event(
        id=uuid.uuid4(),
        host_id=HOST.id,
        host_display_name=HOST.display_name,
        details=details(),
        seats_taken=0,
        state=State.SCHEDULED,
        invite_token="t" * 32,
        version=3,
        create_time=NOW,
        update_time=NOW,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def violations(exc: InvalidArgument) -> set[str]:
    return {field for field, _ in exc.field_violations}


def test_valid_details_pass() -> None:
    domain.validate_details(details(), NOW)


def test_all_bad_fields_are_reported_at_once() -> None:
    bad = details(title="", time_zone="Nowhere/City", capacity=0, duration=timedelta(seconds=10))
    with pytest.raises(InvalidArgument) as info:
        domain.validate_details(bad, NOW)
    assert violations(info.value) == {"event.title", "event.time_zone", "event.capacity", "event.duration"}


@pytest.mark.parametrize(
    ("start", "ok"),
    [
        (NOW - timedelta(seconds=1), False),
        (NOW, False),
        (NOW + timedelta(seconds=1), True),
        (NOW + timedelta(days=800), False),
    ],
)
def test_start_time_window(start: datetime, ok: bool) -> None:
    if ok:
        domain.validate_details(details(start_time=start), NOW)
    else:
        with pytest.raises(InvalidArgument):
            domain.validate_details(details(start_time=start), NOW)


@pytest.mark.parametrize("capacity", [1, 1000])
def test_capacity_bounds_inclusive(capacity: int) -> None:
    domain.validate_details(details(capacity=capacity), NOW)


def test_normalized_trims_text() -> None:
    d = domain.normalized(details(title="  Solaris  ", place=Place(" a ", " b ", " c ")))
    assert d.title == "Solaris"
    assert d.place == Place("a", "b", "c")


def test_private_event_is_invisible_to_strangers_but_not_to_guests_or_invitees() -> None:
    e = event(details=details(visibility=Visibility.PRIVATE))
    stranger = User("x", "X")
    with pytest.raises(NotFound):
        domain.ensure_visible(e, domain.access_for(e, stranger, is_guest=False, invite_token=""))
    with pytest.raises(NotFound):
        domain.ensure_visible(e, domain.access_for(e, None, is_guest=False, invite_token="wrong"))
    domain.ensure_visible(e, domain.access_for(e, stranger, is_guest=False, invite_token=e.invite_token))
    domain.ensure_visible(e, domain.access_for(e, GUEST, is_guest=True, invite_token=""))
    domain.ensure_visible(e, domain.access_for(e, HOST, is_guest=False, invite_token=""))


def test_address_and_token_visibility() -> None:
    e = event()
    assert domain.access_for(e, HOST, is_guest=False, invite_token="").sees_address
    assert domain.access_for(e, HOST, is_guest=False, invite_token="").sees_invite_token
    guest = domain.access_for(e, GUEST, is_guest=True, invite_token="")
    assert guest.sees_address
    assert not guest.sees_invite_token
    invited = domain.access_for(e, GUEST, is_guest=False, invite_token=e.invite_token)
    assert not invited.sees_address


def test_host_only_checks_permission_before_existence() -> None:
    public, private = event(), event(details=details(visibility=Visibility.PRIVATE))
    other = User("o", "O")
    with pytest.raises(PermissionDenied):
        domain.ensure_host(public, domain.access_for(public, other, is_guest=False, invite_token=""))
    with pytest.raises(NotFound):
        domain.ensure_host(private, domain.access_for(private, other, is_guest=False, invite_token=""))
    with pytest.raises(PermissionDenied):  # a guest of a private event knows it exists
        domain.ensure_host(private, domain.access_for(private, GUEST, is_guest=True, invite_token=""))


def test_etag() -> None:
    e = event(version=7)
    domain.ensure_etag(e, "")
    domain.ensure_etag(e, "7")
    with pytest.raises(Aborted) as info:
        domain.ensure_etag(e, "6")
    assert info.value.reason == "ETAG_MISMATCH"


def test_capacity_never_below_seats_taken() -> None:
    e = event(seats_taken=4)
    domain.ensure_capacity_covers_seats(e, 4)
    with pytest.raises(FailedPrecondition) as info:
        domain.ensure_capacity_covers_seats(e, 3)
    assert info.value.reason == "CAPACITY_BELOW_SEATS_TAKEN"


def test_lifecycle_rules() -> None:
    e = event()
    start, end = e.details.start_time, e.details.end_time
    domain.ensure_editable(e, start - timedelta(seconds=1))
    with pytest.raises(FailedPrecondition, match="started"):
        domain.ensure_editable(e, start)
    with pytest.raises(FailedPrecondition) as not_ended:
        domain.ensure_completable(e, end - timedelta(seconds=1))
    assert not_ended.value.reason == "EVENT_NOT_ENDED"
    domain.ensure_completable(e, end)
    cancelled = event(state=State.CANCELLED, cancel_time=NOW)
    with pytest.raises(FailedPrecondition) as not_completable:
        domain.ensure_completable(cancelled, end)
    assert not_completable.value.reason == "EVENT_NOT_COMPLETABLE"
    with pytest.raises(FailedPrecondition) as not_cancellable:
        domain.ensure_cancellable(event(state=State.COMPLETED, complete_time=NOW))
    assert not_cancellable.value.reason == "EVENT_NOT_CANCELLABLE"
    with pytest.raises(FailedPrecondition) as not_private:
        domain.ensure_private(e)
    assert not_private.value.reason == "EVENT_NOT_PRIVATE"


def test_apply_update_touches_only_named_paths() -> None:
    current = details()
    patch = details(title="New", place=Place("", "", "Potsdam"), capacity=99)
    out = domain.apply_update(current, patch, frozenset({"title", "place.city"}))
    assert out.title == "New"
    assert out.place == Place(current.place.name, current.place.address, "Potsdam")
    assert out.capacity == current.capacity
    whole = domain.apply_update(current, patch, frozenset({"place"}))
    assert whole.place == patch.place


def test_changes_are_described_in_local_time() -> None:
    old = details(start_time=datetime(2030, 3, 30, 19, 0, tzinfo=UTC))  # 21:00 CEST? no: CET until 31 March
    new = replace(old, start_time=datetime(2030, 3, 31, 19, 0, tzinfo=UTC))  # after the DST switch: CEST
    (change,) = domain.changes_between(old, new)
    assert change.field == "start_time"
    assert change.old == "Sat 30 Mar 2030, 20:00 CET (Europe/Berlin)"
    assert change.new == "Sun 31 Mar 2030, 21:00 CEST (Europe/Berlin)"


def test_no_changes_when_identical() -> None:
    assert domain.changes_between(details(), details()) == []


@pytest.mark.parametrize("name", ["events/x", "event/" + str(uuid.uuid4()), "", "events/"])
def test_event_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        domain.parse_event_name(name)


def test_event_name_round_trip() -> None:
    eid = uuid.uuid4()
    assert domain.parse_event_name(domain.event_name(eid)) == eid


@pytest.mark.parametrize("name", ["users/", "users/a/b", "user/a", "users/" + "x" * 129, "users/\x00"])
def test_user_names(name: str) -> None:
    with pytest.raises(InvalidArgument):
        names.parse_user(name, "host")
