"""Schema-driven fuzzing of every RPC over real gRPC (in-process servers with the production interceptor chain),
with the host's, a guest's, a stranger's and no token. Passes when no call ends INTERNAL or UNKNOWN and every
server still answers its health check. Strategies: tests/support/fuzz.py (COWATCH_FUZZ_EXAMPLES /
COWATCH_FUZZ_SEED make the run longer or different)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cowatch.booking.v1 import resources_pb2 as booking_resources
from cowatch.booking.v1 import service_pb2 as booking_service
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2 as event_service
from cowatch.event.v1 import service_pb2_grpc as event_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from services.common.clock import ManualClock
from tests.support.api import Caller, new_caller
from tests.support.factories import create_request
from tests.support.fuzz import EXAMPLES, METHODS, SEED, Rpc, ValuePool, requests

pytestmark = pytest.mark.asyncio(loop_scope="session")

BATCH = 8
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


class Target:
    def __init__(self, channels: dict[str, grpc.aio.Channel], roles: dict[str, Caller | None], pool: ValuePool):
        self.channels = channels
        self.roles = roles
        self.pool = pool
        self.codes: dict[str, int] = {}
        self.batches = _calls(pool)
        self.calls = 0

    async def call(self, rpc: Rpc, role: str, request: Any) -> grpc.StatusCode:
        channel = self.channels[rpc.service]
        callable_: Any = channel.unary_unary(
            rpc.path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b
        )
        caller = self.roles[role]
        metadata = caller.metadata if caller else ()
        try:
            await callable_(request, metadata=metadata, timeout=10)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        self.calls += 1
        self.codes[code.name] = self.codes.get(code.name, 0) + 1
        return code


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def target(
    event_channel: grpc.aio.Channel,
    booking_channel: grpc.aio.Channel,
    review_channel: grpc.aio.Channel,
    clock: ManualClock,
) -> Target:
    events = event_grpc.EventServiceStub(event_channel)
    bookings = booking_grpc.BookingServiceStub(booking_channel)
    host, guest, stranger = new_caller("Fuzz Host"), new_caller("Fuzz Guest"), new_caller("Fuzz Stranger")
    public = await events.CreateEvent(create_request(clock.now()), metadata=host.metadata)
    private = await events.CreateEvent(create_request(clock.now(), private=True), metadata=host.metadata)
    booking = await bookings.CreateBooking(
        booking_service.CreateBookingRequest(booking=booking_resources.Booking(event=public.name)),
        metadata=guest.metadata,
    )
    page = await events.ListEvents(event_service.ListEventsRequest(page_size=1))
    pool = ValuePool(
        names=[public.name, private.name, booking.name],
        users=[host.resource, guest.resource, stranger.resource],
        tokens=[private.invite_token, public.etag, page.next_page_token],
    )
    channels = {
        "cowatch.event.v1.EventService": event_channel,
        "cowatch.booking.v1.BookingService": booking_channel,
        "cowatch.review.v1.ReviewService": review_channel,
    }
    return Target(channels, {"host": host, "guest": guest, "stranger": stranger, "anonymous": None}, pool)


def _calls(pool: ValuePool) -> st.SearchStrategy[list[tuple[Rpc, str, Any]]]:
    roles = st.sampled_from(["host", "guest", "stranger", "anonymous"])
    one = st.one_of([st.tuples(st.just(rpc), roles, requests(rpc, pool)) for rpc in METHODS])
    return st.lists(one, min_size=BATCH, max_size=BATCH)


def fuzz_settings(default_examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings of the fuzz tests: a fixed sequence in CI, COWATCH_FUZZ_EXAMPLES/SEED to go further."""

    def apply(test: Any) -> Any:
        test = settings(
            max_examples=EXAMPLES or default_examples,
            derandomize=SEED is None,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            # no explain phase: its line tracing slows every call a hundredfold; a failure still shrinks
            phases=(Phase.explicit, Phase.generate, Phase.shrink),
            report_multiple_bugs=False,
        )(test)
        return seed(int(SEED))(test) if SEED is not None else test

    return apply


@fuzz_settings(250)
@given(data=st.data())
async def test_no_request_from_any_role_is_answered_internal(target: Target, data: st.DataObject) -> None:
    batch = data.draw(target.batches)
    codes = await asyncio.gather(*(target.call(rpc, role, request) for rpc, role, request in batch))
    bad = [(rpc.path, role, code.name) for (rpc, role, _), code in zip(batch, codes, strict=True) if code in FORBIDDEN]
    assert not bad, bad


async def test_servers_are_healthy_after_the_fuzzing(target: Target) -> None:
    print(f"fuzz/grpc: {target.calls} calls, codes {dict(sorted(target.codes.items()))}")
    assert target.calls >= BATCH * min(EXAMPLES or 250, 100)
    for channel in target.channels.values():
        stub: Any = health_pb2_grpc.HealthStub(channel)  # type: ignore[arg-type, unused-ignore]
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
