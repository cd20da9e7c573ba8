"""Blind two-way reviews over real servers: hidden until both have reviewed each other or the window closes,
editable until then, frozen after; ratings count revealed reviews only; the window-end reveal happens once."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from cowatch.review.v1 import resources_pb2, service_pb2
from cowatch.review.v1 import service_pb2_grpc as review_grpc
from google.protobuf import field_mask_pb2

from services.common.clock import ManualClock
from services.common.uow import Handlers
from services.review.app import reveal_job
from services.review.domain_events import ReviewRevealed
from services.review.reveals import RevealJob
from tests.support.api import Caller, expect_error, new_caller
from tests.support.reviews import EVENT, GUEST, HOST, close_review_window, held_event, review_request, servers_cache

pytestmark = pytest.mark.asyncio(loop_scope="session")
PENDING = resources_pb2.Review.PENDING_REVEAL
REVEALED = resources_pb2.Review.REVEALED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def _listed(reviews: review_grpc.ReviewServiceAsyncStub, event: str, caller: Caller | None) -> set[str]:
    metadata = caller.metadata if caller else None
    page = await reviews.ListReviews(service_pb2.ListReviewsRequest(event=event), metadata=metadata)
    return {r.name for r in page.reviews}


async def _as_host(reviews: review_grpc.ReviewServiceAsyncStub, user: str) -> resources_pb2.UserRating:
    return await reviews.GetUserRating(service_pb2.GetUserRatingRequest(name=f"{user}/rating"))


async def _revealed_mails(db_pool, review: str) -> list[str]:
    rows = await db_pool.fetch(
        "SELECT recipients FROM notify.outbox WHERE template_id = 'review_revealed' AND params->>'review' = $1", review
    )
    return [r for row in rows for r in row["recipients"]]


async def test_a_pair_is_hidden_until_both_have_reviewed_then_revealed_together(
    events: event_grpc.EventServiceAsyncStub, reviews: review_grpc.ReviewServiceAsyncStub, clock: ManualClock, db_pool
):
    host, ana, ben = new_caller("Host"), new_caller("Ana"), new_caller("Ben")
    event = await held_event(events, db_pool, clock, host, [ana, ben])
    of_host = await reviews.CreateReview(review_request(event.name, HOST, 2, text="cold room"), metadata=ana.metadata)
    assert of_host.state == PENDING and not of_host.HasField("reveal_time")
    assert of_host.window_close_time.ToDatetime() > clock.now().replace(tzinfo=None) + timedelta(days=13)
    # The author sees it with its state; its subject, other participants and strangers do not.
    assert await _listed(reviews, event.name, ana) == {of_host.name}
    for other in (host, ben, new_caller(), None):
        assert await _listed(reviews, event.name, other) == set()
    assert (await _as_host(reviews, host.resource)).as_host.count == 0
    # The host reviewing another guest completes no pair.
    of_ben = await reviews.CreateReview(
        review_request(event.name, GUEST, 5, subject_user=ben.resource), metadata=host.metadata
    )
    assert of_ben.state == PENDING
    # The host reviewing Ana completes hers: both are revealed at once, counted, and each subject is mailed.
    of_ana = await reviews.CreateReview(
        review_request(event.name, GUEST, 4, subject_user=ana.resource), metadata=host.metadata
    )
    assert of_ana.state == REVEALED and of_ana.HasField("reveal_time")
    for viewer in (host, ana, ben, None):
        listed = await reviews.ListReviews(
            service_pb2.ListReviewsRequest(event=event.name), metadata=viewer.metadata if viewer else None
        )
        by_name = {r.name: r for r in listed.reviews}
        assert {of_host.name, of_ana.name} <= set(by_name)
        assert by_name[of_host.name].state == by_name[of_ana.name].state == REVEALED
        assert by_name[of_host.name].reveal_time == by_name[of_ana.name].reveal_time
        assert (of_ben.name in by_name) == (viewer is host)  # still pending: its author alone
    assert (await _as_host(reviews, host.resource)).as_host.count == 1
    assert (await _as_host(reviews, ana.resource)).as_guest.average == 4.0
    assert (await _as_host(reviews, ben.resource)).as_guest.count == 0
    assert await _revealed_mails(db_pool, of_host.name) == [host.id]
    assert await _revealed_mails(db_pool, of_ana.name) == [ana.id]
    assert await _revealed_mails(db_pool, of_ben.name) == []


async def test_pending_reviews_are_edited_or_withdrawn_revealed_ones_are_frozen(
    events: event_grpc.EventServiceAsyncStub, reviews: review_grpc.ReviewServiceAsyncStub, clock: ManualClock, db_pool
):
    host, ana = new_caller(), new_caller()
    event = await held_event(events, db_pool, clock, host, [ana])
    mine = await reviews.CreateReview(review_request(event.name, HOST, 1), metadata=ana.metadata)
    edited = await reviews.UpdateReview(
        service_pb2.UpdateReviewRequest(
            review=resources_pb2.Review(name=mine.name, rating=3, etag=mine.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["rating"]),
        ),
        metadata=ana.metadata,
    )
    assert (edited.rating, edited.state) == (3, PENDING)
    # Someone else's pending review does not exist for them.
    for request in (
        reviews.DeleteReview(service_pb2.DeleteReviewRequest(name=mine.name), metadata=host.metadata),
        reviews.UpdateReview(
            service_pb2.UpdateReviewRequest(review=resources_pb2.Review(name=mine.name, rating=5)),
            metadata=host.metadata,
        ),
    ):
        err = await expect_error(request)
        assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "REVIEW_NOT_FOUND")
    err = await expect_error(
        reviews.DeleteReview(service_pb2.DeleteReviewRequest(name=mine.name, etag=mine.etag), metadata=ana.metadata)
    )
    assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    await reviews.DeleteReview(service_pb2.DeleteReviewRequest(name=mine.name), metadata=ana.metadata)
    assert await _listed(reviews, event.name, ana) == set()
    # Withdrawn: the author may write again; once the pair completes, both are frozen.
    again = await reviews.CreateReview(review_request(event.name, HOST, 5), metadata=ana.metadata)
    await reviews.CreateReview(review_request(event.name, GUEST, 5, subject_user=ana.resource), metadata=host.metadata)
    for request in (
        reviews.DeleteReview(service_pb2.DeleteReviewRequest(name=again.name), metadata=ana.metadata),
        reviews.UpdateReview(
            service_pb2.UpdateReviewRequest(review=resources_pb2.Review(name=again.name, rating=1)),
            metadata=ana.metadata,
        ),
    ):
        err = await expect_error(request)
        assert (err.code, err.reason) == (PRECONDITION, "REVIEW_FROZEN")
    assert (await _as_host(reviews, host.resource)).as_host.average == 5.0


async def test_the_window_closes_reviews_are_revealed_by_the_worker_and_refused_after(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host, ana, ben = new_caller(), new_caller(), new_caller()
    event = await held_event(events, db_pool, clock, host, [ana, ben])
    of_event = await reviews.CreateReview(review_request(event.name, EVENT, 4), metadata=ana.metadata)
    lonely = await reviews.CreateReview(review_request(event.name, HOST, 2), metadata=ben.metadata)
    clock.advance(timedelta(days=14))
    # Closed, not yet revealed: no new review, and the pending ones are frozen.
    err = await expect_error(reviews.CreateReview(review_request(event.name, EVENT, 5), metadata=ben.metadata))
    assert (err.code, err.reason) == (PRECONDITION, "REVIEW_WINDOW_CLOSED")
    assert err.metadata["closed_at"]
    err = await expect_error(
        reviews.DeleteReview(service_pb2.DeleteReviewRequest(name=lonely.name), metadata=ben.metadata)
    )
    assert err.reason == "REVIEW_FROZEN"
    assert await _listed(reviews, event.name, None) == set()
    assert await close_review_window(db_pool, clock, database_url) >= 2
    assert await _listed(reviews, event.name, None) == {of_event.name, lonely.name}
    assert (await _as_host(reviews, host.resource)).as_host.count == 1
    assert await _revealed_mails(db_pool, lonely.name) == [host.id]
    assert await close_review_window(db_pool, clock, database_url) == 0  # nothing left: never twice


async def test_concurrent_pairs_are_always_revealed(
    events: event_grpc.EventServiceAsyncStub, reviews: review_grpc.ReviewServiceAsyncStub, clock: ManualClock, db_pool
):
    host = new_caller()
    guests = [new_caller() for _ in range(10)]
    event = await held_event(events, db_pool, clock, host, guests)
    writes = []
    for g in guests:  # each pair's two reviews race each other
        writes.append(reviews.CreateReview(review_request(event.name, HOST, 4), metadata=g.metadata))
        writes.append(
            reviews.CreateReview(review_request(event.name, GUEST, 3, subject_user=g.resource), metadata=host.metadata)
        )
    await asyncio.gather(*writes)
    page = await reviews.ListReviews(service_pb2.ListReviewsRequest(event=event.name, page_size=100))
    assert len(page.reviews) == 20 and {r.state for r in page.reviews} == {REVEALED}
    assert (await _as_host(reviews, host.resource)).as_host.count == 10


async def test_a_crashed_reveal_reveals_nothing_and_concurrent_reveals_count_once(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host = new_caller()
    events_held = []
    for _ in range(6):
        guest = new_caller()
        e = await held_event(events, db_pool, clock, host, [guest])
        await reviews.CreateReview(review_request(e.name, HOST, 5), metadata=guest.metadata)
        events_held.append(e)
    clock.advance(timedelta(days=15))

    async def crash(conn: object, e: ReviewRevealed, trace_id: str) -> None:
        raise RuntimeError("worker died mid-transaction")

    crashing = RevealJob(db_pool, clock, Handlers().on(ReviewRevealed, in_transaction=crash))
    with pytest.raises(RuntimeError):
        await crashing.run_once()
    assert (await _as_host(reviews, host.resource)).as_host.count == 0
    # Four workers at once: every review revealed and counted exactly once.
    cache = servers_cache(database_url)
    try:
        jobs = [reveal_job(db_pool, clock, cache, "https://cowatch.test") for _ in range(4)]
        runs = await asyncio.gather(*(job.run_once() for job in jobs))
        assert sum(r.reviews for r in runs) >= 6
        assert (await _as_host(reviews, host.resource)).as_host.count == 6  # and the cached copy was dropped
        assert sum(r.reviews for r in await asyncio.gather(*(job.run_once() for job in jobs))) == 0
    finally:
        await cache.aclose()


async def test_concurrent_reveals_of_one_events_many_reviews_neither_deadlock_nor_double_count(
    events: event_grpc.EventServiceAsyncStub,
    reviews: review_grpc.ReviewServiceAsyncStub,
    clock: ManualClock,
    db_pool,
    database_url: str,
):
    host = new_caller()
    guests = [new_caller() for _ in range(12)]
    event = await held_event(events, db_pool, clock, host, guests)
    for g in guests:
        await reviews.CreateReview(review_request(event.name, EVENT, 4), metadata=g.metadata)
    clock.advance(timedelta(days=15))
    cache = servers_cache(database_url)
    try:
        jobs = [reveal_job(db_pool, clock, cache, "https://cowatch.test") for _ in range(6)]
        await asyncio.gather(*(job.run_once() for job in jobs))  # a deadlock would raise here
    finally:
        await cache.aclose()
    row = await db_pool.fetchrow(
        "SELECT rating_sum, rating_count FROM review.event_ratings WHERE event_id = $1::uuid", event.name[7:]
    )
    assert (row["rating_sum"], row["rating_count"]) == (48, 12)
    assert len(await _listed(reviews, event.name, None)) == 12
