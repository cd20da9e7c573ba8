"""ReviewService over gRPC: proto in → command → service → proto out. Errors are raised as domain exceptions and
turned into google.rpc.Status by the interceptor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from cowatch.review.v1 import resources_pb2, service_pb2, service_pb2_grpc
from google.protobuf import empty_pb2

from services.common.context import current_user, require_user
from services.review import mappers
from services.review.service import ReviewService

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["ReviewService"].full_name
Ctx = grpc.aio.ServicerContext[Any, Any]

# Reads (reviews, ratings, host profiles) work without a token; writes need one.
ANONYMOUS_METHODS = frozenset(
    f"/{SERVICE_NAME}/{method}" for method in ("ListReviews", "GetUserRating", "GetHostProfile", "ListHeldEvents")
)


class ReviewServicer(service_pb2_grpc.ReviewServiceServicer):
    def __init__(self, reviews: Callable[[], ReviewService]) -> None:
        self._get_reviews = reviews

    @property
    def _reviews(self) -> ReviewService:
        return self._get_reviews()

    async def CreateReview(self, request: service_pb2.CreateReviewRequest, context: Ctx) -> resources_pb2.Review:
        review = await self._reviews.create(mappers.to_create_command(request, require_user()))
        return mappers.review_to_proto(review)

    async def UpdateReview(self, request: service_pb2.UpdateReviewRequest, context: Ctx) -> resources_pb2.Review:
        review = await self._reviews.update(mappers.to_update_command(request, require_user()))
        return mappers.review_to_proto(review)

    async def DeleteReview(self, request: service_pb2.DeleteReviewRequest, context: Ctx) -> empty_pb2.Empty:
        await self._reviews.delete(mappers.to_delete_command(request, require_user()))
        return empty_pb2.Empty()

    async def ListReviews(
        self, request: service_pb2.ListReviewsRequest, context: Ctx
    ) -> service_pb2.ListReviewsResponse:
        page = await self._reviews.list(mappers.to_list_query(request, current_user()))
        return service_pb2.ListReviewsResponse(
            reviews=[mappers.review_to_proto(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def GetUserRating(self, request: service_pb2.GetUserRatingRequest, context: Ctx) -> resources_pb2.UserRating:
        return mappers.user_rating_to_proto(await self._reviews.user_rating(mappers.user_rating_user(request)))

    async def GetHostProfile(
        self, request: service_pb2.GetHostProfileRequest, context: Ctx
    ) -> resources_pb2.HostProfile:
        return mappers.host_profile_to_proto(await self._reviews.host_profile(mappers.host_profile_user(request)))

    async def ListHeldEvents(
        self, request: service_pb2.ListHeldEventsRequest, context: Ctx
    ) -> service_pb2.ListHeldEventsResponse:
        page = await self._reviews.held_events(mappers.to_held_events_query(request))
        return service_pb2.ListHeldEventsResponse(
            held_events=[mappers.held_event_to_proto(e) for e in page.items], next_page_token=page.next_page_token
        )
