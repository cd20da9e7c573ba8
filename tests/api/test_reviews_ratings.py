"""ReviewService reads (ListReviews, GetUserRating, GetHostProfile, ListHeldEvents), ratings where EventService
shows them, and the aggregates' exactness: against a recomputation and under concurrency."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import grpc
import pytest
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from cowatch.review.v1 import resources_pb2, service_pb2
from cowatch.review.v1 import service_pb2_grpc as review_grpc
from google.protobuf import field_mask_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.clock import ManualClock
from tests.support.api import Caller, expect_error, new_caller
from tests.support.reviews import (
    EVENT,
    GUEST,
    HOST,
    close_review_window,
    held_event,
    review_request,
    scheduled_event,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _id(name: str) -> uuid.UUID:
    return uuid.UUID(name.split("/")[1])


async def _list_all(
    reviews: review_grpc.ReviewServiceAsyncStub, metadata: tuple[tuple[str, str], ...] = (), **kwargs
) -> list[resources_pb2.Review]:
    out: list[resources_pb2.Review] = []
    token = ""
    while True:
        page = await reviews.ListReviews(
            service_pb2.ListReviewsRequest(page_size=2, page_token=token, **kwargs), metadata=metadata
        )
        out += page.reviews
        token = page.next_page_token
        if not token:
            return out


# ---------------------------------------------------------------------------------------------- ListReviews


async def test_list_by_event_newest_first_in_pages(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, guests = new_caller(), [new_caller(f"G{i}") for i in range(3)]
    event = await held_event(events, db_pool, clock, host, guests)
    written = []
    for g in guests:
        written.append(await reviews.CreateReview(review_request(event.name, EVENT, 4), metadata=g.metadata))
        clock.advance(seconds=1)
        written.append(await reviews.CreateReview(review_request(event.name, HOST, 5), metadata=g.metadata))
        clock.advance(seconds=1)
    written.append(
        await reviews.CreateReview(
            review_request(event.name, GUEST, 3, subject_user=guests[0].resource), metadata=host.metadata
        )
    )
    await close_review_window(db_pool, clock, database_url)
    listed = await _list_all(reviews, event=event.name)
    assert [r.name for r in listed] == [r.name for r in reversed(written)]
    assert listed[-1].author_display_name == "G0"
    hosts_only = await _list_all(reviews, event=event.name, subject_type=HOST)
    assert [r.name for r in hosts_only] == [r.name for r in reversed(written) if r.subject_type == HOST]

    page = await reviews.ListReviews(service_pb2.ListReviewsRequest(event=event.name, page_size=2))
    err = await expect_error(
        reviews.ListReviews(
            service_pb2.ListReviewsRequest(event=event.name, subject_type=EVENT, page_token=page.next_page_token)
        )
    )
    assert (err.code, err.reason) == (INVALID, "INVALID_PAGE_TOKEN")


async def test_reviews_with_equal_times_page_without_gaps_or_repeats(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, guests = new_caller(), [new_caller() for _ in range(7)]
    event = await held_event(events, db_pool, clock, host, guests)  # the clock stands still: equal create_times
    names = {
        (await reviews.CreateReview(review_request(event.name, EVENT, 3), metadata=g.metadata)).name for g in guests
    }
    await close_review_window(db_pool, clock, database_url)
    listed = [r.name for r in await _list_all(reviews, event=event.name)]
    assert len(listed) == len(names) and set(listed) == names


async def test_list_about_a_user_across_events(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, ana, ben = new_caller(), new_caller(), new_caller()
    first = await held_event(events, db_pool, clock, host, [ana, ben])
    second = await held_event(events, db_pool, clock, ben, [ana])  # ben hosts, ana is his guest
    await reviews.CreateReview(review_request(first.name, HOST, 5), metadata=ana.metadata)
    await reviews.CreateReview(review_request(first.name, EVENT, 5), metadata=ben.metadata)
    clock.advance(seconds=1)
    about_ben_as_guest = await reviews.CreateReview(
        review_request(first.name, GUEST, 2, subject_user=ben.resource), metadata=host.metadata
    )
    clock.advance(seconds=1)
    about_ben_as_host = await reviews.CreateReview(review_request(second.name, HOST, 4), metadata=ana.metadata)

    await close_review_window(db_pool, clock, database_url)
    about_ben = await _list_all(reviews, subject_user=ben.resource)
    assert [r.name for r in about_ben] == [about_ben_as_host.name, about_ben_as_guest.name]
    as_guest = await _list_all(reviews, subject_user=ben.resource, subject_type=GUEST)
    assert [r.name for r in as_guest] == [about_ben_as_guest.name]
    assert await _list_all(reviews, subject_user=f"users/{uuid.uuid4().hex}") == []


async def test_reviews_from_private_events_are_listed_only_to_their_participants(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, guest = new_caller(), new_caller()
    private = await held_event(events, db_pool, clock, host, [guest], private=True)
    review = await reviews.CreateReview(
        review_request(private.name, GUEST, 4, subject_user=guest.resource), metadata=host.metadata
    )
    await close_review_window(db_pool, clock, database_url)
    assert await _list_all(reviews, subject_user=guest.resource) == []  # anonymous
    assert await _list_all(reviews, subject_user=guest.resource, metadata=new_caller().metadata) == []
    seen = await _list_all(reviews, subject_user=guest.resource, metadata=guest.metadata)
    assert [r.name for r in seen] == [review.name]
    # The aggregate still counts it: ratings are public numbers, the private event's details are not.
    rating = await reviews.GetUserRating(service_pb2.GetUserRatingRequest(name=f"{guest.resource}/rating"))
    assert rating.as_guest.count == 1


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (service_pb2.ListReviewsRequest(), {"event", "subject_user"}),
        (service_pb2.ListReviewsRequest(event=f"events/{uuid.uuid4()}", subject_user="users/a"), {"event"}),
        (service_pb2.ListReviewsRequest(event="events/x"), {"event"}),
        (service_pb2.ListReviewsRequest(subject_user="bob"), {"subject_user"}),
        (service_pb2.ListReviewsRequest(subject_user="users/a", subject_type=EVENT), {"subject_type"}),
        (
            service_pb2.ListReviewsRequest(
                subject_user="users/a", subject_type=resources_pb2.Review.SubjectType.ValueType(8)
            ),
            {"subject_type"},
        ),
        (service_pb2.ListReviewsRequest(subject_user="users/a", page_size=-1), {"page_size"}),
    ],
)
async def test_bad_list_requests_name_the_field(reviews: review_grpc.ReviewServiceAsyncStub, request_, fields):
    err = await expect_error(reviews.ListReviews(request_))
    assert (err.code, err.reason) == (INVALID, "INVALID_ARGUMENT")
    assert fields <= set(err.fields), err.fields


async def test_malformed_page_token(reviews: review_grpc.ReviewServiceAsyncStub):
    for token in ("%%%", "eyJ2IjoxfQ"):
        err = await expect_error(
            reviews.ListReviews(service_pb2.ListReviewsRequest(subject_user="users/a", page_token=token))
        )
        assert (err.code, err.reason) == (INVALID, "INVALID_PAGE_TOKEN")
        assert "page_token" in err.fields


async def test_list_of_an_unknown_event(reviews: review_grpc.ReviewServiceAsyncStub):
    err = await expect_error(reviews.ListReviews(service_pb2.ListReviewsRequest(event=f"events/{uuid.uuid4()}")))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")


# ---------------------------------------------------------------------------------------------- GetUserRating


async def test_user_rating_in_both_roles(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, ana, ben = new_caller(), new_caller(), new_caller()
    empty = await reviews.GetUserRating(service_pb2.GetUserRatingRequest(name=f"{ana.resource}/rating"))
    assert empty.name == f"{ana.resource}/rating"
    assert (empty.as_host.count, empty.as_host.average, empty.as_guest.count) == (0, 0.0, 0)

    first = await held_event(events, db_pool, clock, host, [ana, ben])
    second = await held_event(events, db_pool, clock, ana, [ben])
    await reviews.CreateReview(review_request(first.name, GUEST, 4, subject_user=ana.resource), metadata=host.metadata)
    await reviews.CreateReview(review_request(second.name, HOST, 2), metadata=ben.metadata)
    await reviews.CreateReview(review_request(first.name, HOST, 5), metadata=ana.metadata)  # about the host
    await close_review_window(db_pool, clock, database_url)
    rating = await reviews.GetUserRating(service_pb2.GetUserRatingRequest(name=f"{ana.resource}/rating"))
    assert (rating.as_guest.average, rating.as_guest.count) == (4.0, 1)
    assert (rating.as_host.average, rating.as_host.count) == (2.0, 1)


@pytest.mark.parametrize(
    "name", ["", "users/a", "users/a/ratings", "people/a/rating", "users//rating", "users/a/b/rating"]
)
async def test_bad_user_rating_names(reviews: review_grpc.ReviewServiceAsyncStub, name):
    err = await expect_error(reviews.GetUserRating(service_pb2.GetUserRatingRequest(name=name)))
    assert err.code == INVALID and "name" in err.fields


# ---------------------------------------------------------------------------------------------- host profile


async def test_host_profile_lists_public_held_events_with_their_ratings(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, ana, ben = new_caller("Hanna Host"), new_caller(), new_caller()
    older = await held_event(events, db_pool, clock, host, [ana, ben], title="Older night", film_title="Stalker")
    private = await held_event(events, db_pool, clock, host, [ana], private=True)
    newer = await held_event(events, db_pool, clock, host, [ana], title="Newer night")
    await scheduled_event(events, db_pool, clock, host, [ben])  # not held: not listed
    for guest, stars in ((ana, 5), (ben, 2)):
        await reviews.CreateReview(review_request(older.name, EVENT, stars), metadata=guest.metadata)
        await reviews.CreateReview(review_request(older.name, HOST, stars), metadata=guest.metadata)
    await reviews.CreateReview(review_request(private.name, HOST, 1), metadata=ana.metadata)
    await reviews.CreateReview(review_request(private.name, EVENT, 1), metadata=ana.metadata)

    await close_review_window(db_pool, clock, database_url)
    profile = await reviews.GetHostProfile(service_pb2.GetHostProfileRequest(name=f"{host.resource}/hostProfile"))
    assert profile.name == f"{host.resource}/hostProfile"
    assert profile.display_name == "Hanna Host"
    assert profile.held_event_count == 2  # the private one isn't shown
    assert (profile.host_rating.average, profile.host_rating.count) == (2.67, 3)  # over every HOST review

    parent = f"{host.resource}/hostProfile"
    page = await reviews.ListHeldEvents(service_pb2.ListHeldEventsRequest(parent=parent, page_size=1))
    assert [e.event for e in page.held_events] == [newer.name]
    assert (page.held_events[0].rating.count, page.held_events[0].rating.average) == (0, 0.0)
    assert page.next_page_token
    page = await reviews.ListHeldEvents(
        service_pb2.ListHeldEventsRequest(parent=parent, page_size=1, page_token=page.next_page_token)
    )
    (held,) = page.held_events
    assert (held.event, held.title, held.film_title) == (older.name, "Older night", "Stalker")
    assert held.start_time == older.start_time
    assert (held.rating.average, held.rating.count) == (3.5, 2)
    assert page.next_page_token == ""

    other = f"{ana.resource}/hostProfile"
    err = await expect_error(
        reviews.ListHeldEvents(service_pb2.ListHeldEventsRequest(parent=other, page_token=page.next_page_token or "x"))
    )
    assert err.reason == "INVALID_PAGE_TOKEN"


async def test_unknown_hosts_are_not_found(reviews: review_grpc.ReviewServiceAsyncStub):
    name = f"users/{uuid.uuid4().hex}/hostProfile"
    err = await expect_error(reviews.GetHostProfile(service_pb2.GetHostProfileRequest(name=name)))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    err = await expect_error(reviews.ListHeldEvents(service_pb2.ListHeldEventsRequest(parent=name)))
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")


async def test_only_hosts_of_public_events_have_a_profile(
    events: event_grpc.EventServiceAsyncStub, reviews: review_grpc.ReviewServiceAsyncStub, clock: ManualClock, db_pool
):
    """A profile names its user: it must not exist for users who never showed their name on a public event."""
    private_host, guest, public_host = new_caller("Priv Host"), new_caller("Gina Guest"), new_caller("Pub Host")
    await held_event(events, db_pool, clock, private_host, [guest], private=True)  # both are known users now
    for user in (private_host, guest):
        name = f"{user.resource}/hostProfile"
        err = await expect_error(reviews.GetHostProfile(service_pb2.GetHostProfileRequest(name=name)))
        assert (err.code, err.reason, err.message) == (
            grpc.StatusCode.NOT_FOUND,
            "USER_NOT_FOUND",
            f"{user.resource} does not exist",
        )
        err = await expect_error(reviews.ListHeldEvents(service_pb2.ListHeldEventsRequest(parent=name)))
        assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")

    await scheduled_event(events, db_pool, clock, public_host)  # public, not held yet: the name is public already
    name = f"{public_host.resource}/hostProfile"
    profile = await reviews.GetHostProfile(service_pb2.GetHostProfileRequest(name=name))
    assert (profile.display_name, profile.held_event_count) == ("Pub Host", 0)
    assert not (await reviews.ListHeldEvents(service_pb2.ListHeldEventsRequest(parent=name))).held_events


async def test_bad_host_profile_requests(reviews: review_grpc.ReviewServiceAsyncStub):
    for name in ("users/a", "users/a/rating", "hosts/a/hostProfile", ""):
        err = await expect_error(reviews.GetHostProfile(service_pb2.GetHostProfileRequest(name=name)))
        assert err.code == INVALID and "name" in err.fields
        err = await expect_error(reviews.ListHeldEvents(service_pb2.ListHeldEventsRequest(parent=name)))
        assert err.code == INVALID and "parent" in err.fields
    err = await expect_error(
        reviews.ListHeldEvents(service_pb2.ListHeldEventsRequest(parent="users/a/hostProfile", page_size=-1))
    )
    assert err.code == INVALID and "page_size" in err.fields


# ---------------------------------------------------------------------------------------------- ratings on events


async def test_host_rating_shows_on_events(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, ana, ben = new_caller(), new_caller(), new_caller()
    held = await held_event(events, db_pool, clock, host, [ana, ben])
    await reviews.CreateReview(review_request(held.name, HOST, 5), metadata=ana.metadata)
    await reviews.CreateReview(review_request(held.name, HOST, 4), metadata=ben.metadata)
    await close_review_window(db_pool, clock, database_url)
    upcoming = await scheduled_event(events, db_pool, clock, host, capacity=4)

    got = await events.GetEvent(event_service_pb2.GetEventRequest(name=upcoming.name))
    assert (got.host_rating.average, got.host_rating.count) == (4.5, 2)
    listed = await events.ListEvents(event_service_pb2.ListEventsRequest(host=host.resource))
    assert [(e.name, e.host_rating.average, e.host_rating.count) for e in listed.events] == [(upcoming.name, 4.5, 2)]


async def test_guest_rating_shows_in_the_guest_list(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, other_host, ana, ben = new_caller(), new_caller(), new_caller("Ana"), new_caller("Ben")
    first = await held_event(events, db_pool, clock, host, [ana, ben])
    second = await held_event(events, db_pool, clock, other_host, [ana])
    await reviews.CreateReview(review_request(first.name, GUEST, 5, subject_user=ana.resource), metadata=host.metadata)
    await reviews.CreateReview(review_request(first.name, GUEST, 3, subject_user=ben.resource), metadata=host.metadata)
    await reviews.CreateReview(
        review_request(second.name, GUEST, 2, subject_user=ana.resource), metadata=other_host.metadata
    )
    await close_review_window(db_pool, clock, database_url)
    third_host = new_caller()
    upcoming = await scheduled_event(events, db_pool, clock, third_host, [ana, ben])
    page = await events.ListEventGuests(
        event_service_pb2.ListEventGuestsRequest(parent=upcoming.name), metadata=third_host.metadata
    )
    ratings = {g.display_name: (g.guest_rating.average, g.guest_rating.count) for g in page.guests}
    assert ratings == {"Ana": (3.5, 2), "Ben": (3.0, 1)}


# ---------------------------------------------------------------------------------------------- exactness

AGGREGATES_MATCH_REVIEWS = """
WITH users_recomputed AS (
    SELECT subject_user_id AS user_id, subject_type AS role, sum(rating) AS s, count(*) AS c
    FROM review.reviews WHERE subject_type IN ('HOST', 'GUEST') AND reveal_time IS NOT NULL GROUP BY 1, 2
), events_recomputed AS (
    SELECT event_id, sum(rating) AS s, count(*) AS c FROM review.reviews
    WHERE subject_type = 'EVENT' AND reveal_time IS NOT NULL GROUP BY 1
)
SELECT
    (SELECT count(*) FROM review.user_ratings ur FULL JOIN users_recomputed r USING (user_id, role)
     WHERE ur.rating_sum IS DISTINCT FROM r.s OR ur.rating_count IS DISTINCT FROM r.c) AS user_mismatches,
    (SELECT count(*) FROM review.event_ratings er FULL JOIN events_recomputed r USING (event_id)
     WHERE er.rating_sum IS DISTINCT FROM r.s OR er.rating_count IS DISTINCT FROM r.c) AS event_mismatches
"""


async def _assert_aggregates_match_reviews(db_pool) -> None:
    row = await db_pool.fetchrow(AGGREGATES_MATCH_REVIEWS)
    assert (row["user_mismatches"], row["event_mismatches"]) == (0, 0)


_op = st.tuples(st.sampled_from(["create", "edit", "edit_text"]), st.integers(0, 1000), st.integers(1, 5))


@settings(max_examples=20, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, min_size=1, max_size=25))
async def test_aggregates_equal_a_recomputation_from_the_reviews(
    events: event_grpc.EventServiceAsyncStub, reviews: review_grpc.ReviewServiceAsyncStub, clock: ManualClock, db_pool,
    database_url: str, ops: list[tuple[str, int, int]],
):  # fmt: skip
    """A random sequence of creates (some refused as duplicates, some completing a pair and so revealing it) and
    edits (refused once revealed), over two events sharing a host and guests; aggregates equal the recomputation
    from the revealed reviews throughout, and once the window has closed the API agrees with a model of what was
    written."""
    host, g = new_caller(), [new_caller() for _ in range(4)]
    first = await held_event(events, db_pool, clock, host, g[:3])
    second = await held_event(events, db_pool, clock, host, g[1:])
    slots: list[
        tuple[Caller, str, resources_pb2.Review.SubjectType.ValueType, str]
    ] = []  # (author, event, subject type, subject user)
    for event, guests in ((first, g[:3]), (second, g[1:])):
        slots.append((host, event.name, EVENT, ""))
        for guest in guests:
            slots += [(guest, event.name, EVENT, ""), (guest, event.name, HOST, "")]
            slots.append((host, event.name, GUEST, guest.resource))
    written: dict[int, tuple[Caller, resources_pb2.Review]] = {}  # slot → latest state
    for kind, pick, stars in ops:
        if kind == "create":
            slot = pick % len(slots)
            author, event_name, subject_type, subject_user = slots[slot]
            request = review_request(event_name, subject_type, stars, subject_user=subject_user)
            if slot in written:
                err = await expect_error(reviews.CreateReview(request, metadata=author.metadata))
                assert err.reason == "ALREADY_REVIEWED"
            else:
                written[slot] = (author, await reviews.CreateReview(request, metadata=author.metadata))
        elif written:
            slot = sorted(written)[pick % len(written)]
            author, review = written[slot]
            paths = ["rating"] if kind == "edit" else ["text"]
            update = service_pb2.UpdateReviewRequest(
                review=resources_pb2.Review(name=review.name, rating=stars, text=f"edit {pick}"),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            )
            revealed = await db_pool.fetchval(
                "SELECT reveal_time IS NOT NULL FROM review.reviews WHERE id = $1", uuid.UUID(review.name[8:])
            )
            if revealed:  # by its pair since: frozen
                err = await expect_error(reviews.UpdateReview(update, metadata=author.metadata))
                assert err.reason == "REVIEW_FROZEN"
            else:
                written[slot] = (author, await reviews.UpdateReview(update, metadata=author.metadata))

    await _assert_aggregates_match_reviews(db_pool)
    await close_review_window(db_pool, clock, database_url)
    await _assert_aggregates_match_reviews(db_pool)
    expected: dict[tuple[str, resources_pb2.Review.SubjectType.ValueType], list[int]] = defaultdict(list)
    for _, review in written.values():
        if review.subject_type != EVENT:
            expected[(review.subject_user, review.subject_type)].append(review.rating)
    for user in [host, *g]:
        got = await reviews.GetUserRating(service_pb2.GetUserRatingRequest(name=f"{user.resource}/rating"))
        for role, rating in ((HOST, got.as_host), (GUEST, got.as_guest)):
            stars_ = expected[(user.resource, role)]
            assert rating.count == len(stars_)
            assert rating.average == (round(sum(stars_) / len(stars_), 2) if stars_ else 0.0)


async def test_200_concurrent_reviews_of_one_host_keep_the_rating_exact(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, guests = new_caller(), [new_caller() for _ in range(200)]
    event = await held_event(events, db_pool, clock, host, guests, capacity=200)
    stars = [1 + (i * 37) % 5 for i in range(len(guests))]
    created = await asyncio.gather(
        *(
            reviews.CreateReview(
                review_request(event.name, HOST, s, request_id=str(uuid.uuid4())), metadata=g.metadata, timeout=30
            )
            for g, s in zip(guests, stars, strict=True)
        )
    )
    assert len({r.name for r in created}) == 200
    await close_review_window(db_pool, clock, database_url)
    rating = (await reviews.GetUserRating(service_pb2.GetUserRatingRequest(name=f"{host.resource}/rating"))).as_host
    assert (rating.count, rating.average) == (200, round(sum(stars) / 200, 2))
    row = await db_pool.fetchrow(
        "SELECT rating_sum, rating_count FROM review.user_ratings WHERE user_id = $1 AND role = 'HOST'", host.id
    )
    assert (row["rating_sum"], row["rating_count"]) == (sum(stars), 200)
    await _assert_aggregates_match_reviews(db_pool)
