"""Load for the chaos scenarios: paced CreateBooking calls through Envoy, each by a new guest with its own request
id, retried on UNAVAILABLE with the same id (what the SDKs do), plus a GetEvent read beside each booking.

Every attempt's answer is kept with its time, so a scenario can tell when clients were without answers.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from cowatch.booking.v1 import resources_pb2 as booking_pb2
from cowatch.booking.v1 import service_pb2 as booking_service_pb2
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2 as event_service_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from tests.support.api import new_caller, rich_error

ATTEMPT_TIMEOUT = 5.0
RETRY_BUDGET = 30.0  # seconds a client keeps retrying one request
TRANSIENT = "UNAVAILABLE"


@dataclass
class Call:
    """One logical request and every attempt at it."""

    kind: str  # "book" or "read"
    event: str
    request_id: str = ""
    guest_id: str = ""
    outcome: str = ""  # "OK", or the final error's reason (its code when it has none)
    booking: str = ""
    names_seen: set[str] = field(default_factory=set)
    attempts: list[tuple[float, str]] = field(default_factory=list)  # (answered at, "OK" / code name)
    sent_at: float = 0.0


@dataclass
class LoadResult:
    calls: list[Call]
    started: float
    finished: float

    @property
    def bookings(self) -> list[Call]:
        return [c for c in self.calls if c.kind == "book"]

    def confirmed(self) -> list[Call]:
        return [c for c in self.bookings if c.outcome == "OK"]

    def errors(self, booked_guests: set[str]) -> str:
        """Final errors by reason/code (reads prefixed), with how many of those failed bookings exist all the same
        (``booked_guests``: the guests holding a confirmed booking; the answer was lost, a retry with the request id
        gets the booking); then the transient answers clients retried."""
        final = Counter(
            (c.outcome if c.kind == "book" else f"read {c.outcome}") for c in self.calls if c.outcome != "OK"
        )
        booked = Counter(c.outcome for c in self.bookings if c.outcome != "OK" and c.guest_id in booked_guests)
        retried = Counter(code for c in self.calls for _, code in c.attempts[:-1] if code != "OK")
        parts = [f"{k} {n}" + (f" ({booked[k]} booked)" if booked[k] else "") for k, n in sorted(final.items())]
        parts += [f"retried {k} {n}" for k, n in sorted(retried.items())]
        return ", ".join(parts) or "none"

    def longest_silence(self, since: float) -> float:
        """The longest time from ``since`` on during which no call got a definitive answer (a success or a
        refusal: anything but UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED / a reset), up to the last answer."""
        answered = sorted(t for c in self.calls for t, code in c.attempts if t >= since and code not in _NO_ANSWER)
        if not answered:
            return self.finished - since
        points = [since, *answered]
        return max(b - a for a, b in itertools.pairwise(points))


_NO_ANSWER = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL"})


class Load:
    """``rate`` booking calls per second for ``seconds``, alternating over ``events``, through ``target``."""

    def __init__(self, target: str, events: list[str], *, rate: float, seconds: float, label: str) -> None:
        self.target = target
        self.events = events
        self.rate = rate
        self.total = max(1, round(rate * seconds))
        self.label = label
        self.done = 0
        self._progress = asyncio.Condition()

    def describe(self) -> str:
        return f"{self.total} CreateBooking + {self.total} GetEvent at {self.rate:g}/s"

    async def reached(self, fraction: float) -> None:
        """Until ``fraction`` of the booking calls have finished."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.done >= fraction * self.total)

    async def run(self, *faults: Callable[[], Coroutine[Any, Any, None]]) -> LoadResult:
        loop = asyncio.get_running_loop()
        channels = [grpc.aio.insecure_channel(self.target) for _ in range(4)]
        fault_tasks = [asyncio.create_task(f()) for f in faults]
        calls: list[Call] = []
        started = loop.time()
        try:
            tasks = []
            for i in range(self.total):
                delay = started + i / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                channel = channels[i % len(channels)]
                event = self.events[i % len(self.events)]
                book = Call("book", event, request_id=str(uuid.uuid4()))
                read = Call("read", event)
                calls += [book, read]
                tasks.append(asyncio.create_task(self._book(channel, book)))
                tasks.append(asyncio.create_task(self._read(channel, read)))
            await asyncio.gather(*tasks)
            await asyncio.gather(*fault_tasks)
        finally:
            for task in fault_tasks:
                task.cancel()
            for channel in channels:
                await channel.close()
        return LoadResult(calls, started, loop.time())

    async def _attempts(self, call: Call, attempt: Callable[[], Awaitable[str]]) -> None:
        loop = asyncio.get_running_loop()
        call.sent_at = loop.time()
        backoff = 0.05
        while True:
            try:
                call.booking = await attempt()
                call.attempts.append((loop.time(), "OK"))
                call.outcome = "OK"
                return
            except grpc.aio.AioRpcError as exc:
                err = rich_error(exc)
                code = err.code.name
                call.attempts.append((loop.time(), code))
                if code == TRANSIENT and loop.time() - call.sent_at < RETRY_BUDGET:
                    await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, 1.0)
                    continue
                call.outcome = err.reason or code
                return

    async def _book(self, channel: grpc.aio.Channel, call: Call) -> None:
        guest = new_caller("Chaos Guest", user_id=f"chaos-{self.label}-{call.request_id[:13]}")
        call.guest_id = guest.id
        stub = booking_grpc.BookingServiceStub(channel)
        request = booking_service_pb2.CreateBookingRequest(
            booking=booking_pb2.Booking(event=call.event, seats=1), request_id=call.request_id
        )

        async def attempt() -> str:
            booking = await stub.CreateBooking(request, metadata=guest.metadata, timeout=ATTEMPT_TIMEOUT)
            call.names_seen.add(booking.name)
            return str(booking.name)

        try:
            await self._attempts(call, attempt)
        finally:
            async with self._progress:
                self.done += 1
                self._progress.notify_all()

    async def _read(self, channel: grpc.aio.Channel, call: Call) -> None:
        stub = event_grpc.EventServiceStub(channel)
        request = event_service_pb2.GetEventRequest(name=call.event)

        async def attempt() -> str:
            await stub.GetEvent(request, timeout=ATTEMPT_TIMEOUT)
            return ""

        await self._attempts(call, attempt)
