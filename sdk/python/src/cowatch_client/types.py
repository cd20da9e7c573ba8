"""The API's messages, as generated from its protos: build requests' resources with them, read results from them."""

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from cowatch_client._proto.cowatch.booking.v1.resources_pb2 import Attendance, Booking, WaitlistEntry
from cowatch_client._proto.cowatch.booking.v1.service_pb2 import TimeFilter
from cowatch_client._proto.cowatch.event.v1.resources_pb2 import Event, Film, Guest, Place
from cowatch_client._proto.cowatch.event.v1.service_pb2 import SendInvitationsResponse
from cowatch_client._proto.cowatch.review.v1.resources_pb2 import HeldEvent, HostProfile, Review, UserRating
from cowatch_client._proto.cowatch.type.v1.rating_pb2 import Rating, Reliability

__all__ = [
    "Attendance",
    "Booking",
    "Duration",
    "Event",
    "Film",
    "Guest",
    "HeldEvent",
    "HostProfile",
    "Place",
    "Rating",
    "Reliability",
    "Review",
    "SendInvitationsResponse",
    "TimeFilter",
    "Timestamp",
    "UserRating",
    "WaitlistEntry",
]
