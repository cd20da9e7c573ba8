"""The chaos scenarios: each applies load through Envoy, injects one fault into the stack mid-burst, lets it
recover, and returns one row of what survived.

Columns (one row per scenario):

* **confirmed**: booking calls the client saw succeed (after its own retries);
* **lost**: bookings — a client saw success but there is no confirmed booking row with that name; messages — an
  outbox row written during the scenario that the notification stand-in never accepted (or is not SENT) once the
  worker has caught up;
* **duplicated**: bookings — more than one booking row for one request (each request is a different guest), or
  two names returned for one request id; messages — a dedupe key the stand-in accepted as new more than once;
* **oversold**: seats confirmed beyond an event's capacity, plus any difference between an event's seat counter
  and its confirmed bookings;
* **errors**: the final error of each call that failed (its reason, else its code; reads prefixed ``read``; "n
  booked": bookings made all the same, whose answer was lost), then the transient answers clients retried with the
  same request id;
* **recovery**: for faults of the request path, the longest time from the fault on during which no call got a
  definitive answer (success or refusal): how long clients were without service; for the worker and the
  notification service, the time from the component's return until every message written meanwhile was delivered.
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from tests.chaos.load import Load, LoadResult
from tests.chaos.stack import WORKER_LEASE_SECONDS, ChaosStack
from tests.support.api import new_caller
from tests.support.bookings import uid
from tests.support.factories import create_request


@dataclass
class Row:
    scenario: str
    load: str
    fault: str
    confirmed: int
    lost_bookings: int
    lost_messages: int
    duplicated_bookings: int
    duplicated_messages: int
    oversold: int
    errors: str
    recovery_seconds: float
    recovery_note: str

    @property
    def correct(self) -> bool:
        return not (
            self.lost_bookings
            or self.lost_messages
            or self.duplicated_bookings
            or self.duplicated_messages
            or self.oversold
        )

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "correct": self.correct}


HEADER = (
    "| scenario | load applied | fault | confirmed | lost (bookings / messages) | duplicated (bookings / messages) "
    "| oversold | errors by code | recovery |"
)


RULE = "|" + "---|" * 9


def markdown_row(r: Row) -> str:
    return (
        f"| {r.scenario} | {r.load} | {r.fault} | {r.confirmed} | {r.lost_bookings} / {r.lost_messages} "
        f"| {r.duplicated_bookings} / {r.duplicated_messages} | {r.oversold} | {r.errors} "
        f"| {r.recovery_seconds:.1f} s {r.recovery_note} |"
    )


def markdown(rows: list[Row]) -> str:
    return "\n".join([HEADER, RULE, *(markdown_row(r) for r in rows)]) + "\n"


@dataclass
class Burst:
    """One scenario's load and what it ran against."""

    load: Load
    result: LoadResult
    events: list[str]
    capacity: int
    outbox_after: int  # outbox rows above this id were written during the scenario


class Chaos:
    """What every scenario needs: the stack, the run's scale, events to book, and the final accounting."""

    def __init__(self, stack: ChaosStack, *, quick: bool) -> None:
        self.stack = stack
        self.quick = quick
        self.rate = 30.0 if quick else 40.0
        self.burst_seconds = 2.5 if quick else 10.0
        self.drain_timeout = 60.0 if quick else 180.0
        self._host = new_caller("Chaos Host", user_id="chaos-host")
        self._day = 0

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def events(self, count: int, capacity: int) -> list[str]:
        """``count`` fresh public events; each on its own day so a guest could never overlap (guests are new)."""
        names = []
        async with grpc.aio.insecure_channel(self.stack.envoy.target) as channel:
            stub = event_grpc.EventServiceStub(channel)
            for _ in range(count):
                self._day += 1
                request = create_request(datetime.now(UTC), start_in=timedelta(days=3 + self._day), capacity=capacity)
                event = await stub.CreateEvent(request, metadata=self._host.metadata, timeout=10)
                names.append(event.name)
        return names

    async def outbox_high_water(self) -> int:
        assert self.stack.pool is not None
        return int(await self.stack.pool.fetchval("SELECT coalesce(max(id), 0) FROM notify.outbox"))

    async def wait_delivered(self, after_id: int) -> float:
        """Until every outbox row above ``after_id`` is SENT (or the drain timeout passes); returns seconds."""
        assert self.stack.pool is not None
        started = self.now()
        while self.now() - started < self.drain_timeout:
            pending = await self.stack.pool.fetchval(
                "SELECT count(*) FROM notify.outbox WHERE id > $1 AND state <> 'SENT'", after_id
            )
            if not pending:
                break
            await asyncio.sleep(0.1)
        return self.now() - started

    async def row(self, scenario: str, fault: str, burst: Burst, recovery: tuple[float, str]) -> Row:
        pool = self.stack.pool
        assert pool is not None
        result, events, outbox_after = burst.result, burst.events, burst.outbox_after
        await self.wait_delivered(outbox_after)
        confirmed = result.confirmed()
        rows = await pool.fetch(
            "SELECT id, guest_id, state FROM booking.bookings WHERE event_id = ANY($1::uuid[])",
            [uid(e) for e in events],
        )
        confirmed_ids = {str(r["id"]) for r in rows if r["state"] == "CONFIRMED"}
        lost_bookings = sum(1 for c in confirmed if str(uid(c.booking)) not in confirmed_ids)
        per_guest: dict[str, int] = {}
        for r in rows:
            per_guest[r["guest_id"]] = per_guest.get(r["guest_id"], 0) + 1
        duplicated_bookings = sum(n - 1 for n in per_guest.values() if n > 1)
        duplicated_bookings += sum(len(c.names_seen) - 1 for c in result.bookings if len(c.names_seen) > 1)

        counts = await pool.fetch(
            "SELECT e.capacity, e.seats_taken, coalesce(sum(b.seats) FILTER (WHERE b.state = 'CONFIRMED'), 0) AS n "
            "FROM event.events e LEFT JOIN booking.bookings b ON b.event_id = e.id "
            "WHERE e.id = ANY($1::uuid[]) GROUP BY e.id",
            [uid(e) for e in events],
        )
        oversold = sum(max(0, r["n"] - r["capacity"]) + abs(r["seats_taken"] - r["n"]) for r in counts)

        messages = await pool.fetch("SELECT dedupe_key, state FROM notify.outbox WHERE id > $1", outbox_after)
        delivered = self.stack.standin.deliveries()
        lost_messages = sum(1 for m in messages if m["state"] != "SENT" or delivered[m["dedupe_key"]] == 0)
        duplicated_messages = sum(delivered[m["dedupe_key"]] - 1 for m in messages if delivered[m["dedupe_key"]] > 1)
        seconds, note = recovery
        return Row(
            scenario=scenario,
            load=f"{burst.load.describe()}; {len(events)} events × {burst.capacity} seats; {len(messages)} messages",
            fault=fault,
            confirmed=len(confirmed),
            lost_bookings=lost_bookings,
            lost_messages=lost_messages,
            duplicated_bookings=duplicated_bookings,
            duplicated_messages=duplicated_messages,
            oversold=oversold,
            errors=result.errors({r["guest_id"] for r in rows if r["state"] == "CONFIRMED"}),
            recovery_seconds=seconds,
            recovery_note=note,
        )

    async def burst(
        self, label: str, *faults: Callable[[Load], Coroutine[Any, Any, None]], seconds: float | None = None
    ) -> Burst:
        """Two events sized for 80 % of the demand, then the load with ``faults`` running beside it."""
        total = round(self.rate * (seconds or self.burst_seconds))
        capacity = max(1, int(total * 0.4))
        events = await self.events(2, capacity)
        outbox_after = await self.outbox_high_water()
        load = Load(self.stack.envoy.target, events, rate=self.rate, seconds=seconds or self.burst_seconds, label=label)
        result = await load.run(*(functools.partial(f, load) for f in faults))
        return Burst(load, result, events, capacity, outbox_after)


# ------------------------------------------------------------------------------------------------ scenarios

Scenario = Callable[[Chaos], Awaitable[Row]]


async def _signal_booking_replica(chaos: Chaos, index: int, sig: signal.Signals, scenario: str, what: str) -> Row:
    """``sig`` to one BookingService replica at 1/3 of the burst; restarted once the burst is over."""
    replica = chaos.stack.bookings[index]
    at: list[float] = []

    async def fault(load: Load) -> None:
        await load.reached(1 / 3)
        at.append(chaos.now())
        assert replica.proc is not None
        replica.proc.send_signal(sig)

    burst = await chaos.burst(sig.name, fault)
    fault_text = f"{what} of 1 of 2 BookingService replicas at 1/3 of the burst (restarted after)"
    row = chaos.row(scenario, fault_text, burst, (burst.result.longest_silence(at[0]), "without answers"))
    done, _ = await asyncio.gather(row, chaos.stack.restart_booking(replica))  # accounting reads only the database
    return done


async def kill_booking_replica(chaos: Chaos) -> Row:
    return await _signal_booking_replica(chaos, 0, signal.SIGKILL, "booking replica killed", "kill -9")


async def kill_worker(chaos: Chaos) -> Row:
    worker = chaos.stack.worker
    pause = 2.0 if chaos.quick else 5.0
    back: list[float] = []
    in_flight: list[int] = []

    async def fault(load: Load) -> None:
        await load.reached(1 / 3)
        assert chaos.stack.pool is not None
        in_flight.append(await chaos.stack.pool.fetchval("SELECT count(*) FROM notify.outbox WHERE state = 'PENDING'"))
        await asyncio.to_thread(worker.kill)
        await asyncio.sleep(pause)
        worker.stop()  # closes the old log handle
        worker.start()
        back.append(chaos.now())

    burst = await chaos.burst("kill-worker", fault)
    await chaos.wait_delivered(burst.outbox_after)
    since_back = chaos.now() - back[0]
    return await chaos.row(
        "worker killed",
        f"kill -9 of the worker mid-relay at 1/3 of the burst ({in_flight[0]} messages not yet sent), restarted "
        f"{pause:g} s later (lease {WORKER_LEASE_SECONDS:g} s)",
        burst,
        (since_back, "until all delivered"),
    )


async def postgres_restart(chaos: Chaos) -> Row:
    down = 2.0 if chaos.quick else 5.0
    at: list[float] = []

    async def fault(load: Load) -> None:
        await load.reached(1 / 3)
        at.append(chaos.now())
        await asyncio.to_thread(chaos.stack.pg.stop)
        await asyncio.sleep(down)
        await asyncio.to_thread(chaos.stack.pg.start)

    burst = await chaos.burst("postgres", fault)
    return await chaos.row(
        "PostgreSQL restarted",
        f"PostgreSQL stopped (fast shutdown) at 1/3 of the burst, started {down:g} s later",
        burst,
        (burst.result.longest_silence(at[0]), "without answers"),
    )


async def redis_freeze_and_kill(chaos: Chaos) -> Row:
    frozen = 2.0 if chaos.quick else 5.0
    redis = chaos.stack.redis
    at: list[float] = []

    async def fault(load: Load) -> None:
        await load.reached(0.2)
        at.append(chaos.now())
        redis.pause()
        await asyncio.sleep(frozen)
        redis.resume()
        await load.reached(0.6)
        await asyncio.to_thread(redis.kill)

    burst = await chaos.burst("redis", fault, seconds=chaos.burst_seconds * 1.5)
    await asyncio.to_thread(redis.start)  # same port, empty
    return await chaos.row(
        "Redis frozen, then killed",
        f"SIGSTOP of redis-server for {frozen:g} s at 1/5 of the burst, SIGCONT, kill -9 at 3/5 (restarted after)",
        burst,
        (burst.result.longest_silence(at[0]), "without answers"),
    )


async def sigterm_booking_replica(chaos: Chaos) -> Row:
    return await _signal_booking_replica(chaos, 1, signal.SIGTERM, "booking replica SIGTERM", "SIGTERM")


async def notification_down(chaos: Chaos) -> Row:
    down = 3.0 if chaos.quick else 30.0
    standin = chaos.stack.standin
    stopped = chaos.now()
    await asyncio.to_thread(standin.stop, 10)

    burst = await chaos.burst("notify")
    await asyncio.sleep(max(0.0, stopped + down - chaos.now()))
    standin.start()
    await asyncio.to_thread(standin.wait_serving)
    back = chaos.now()
    await chaos.wait_delivered(burst.outbox_after)
    return await chaos.row(
        "notification service down",
        f"notification stand-in stopped for {down:g} s from before the burst",
        burst,
        (chaos.now() - back, "until all delivered"),
    )


SCENARIOS: tuple[Scenario, ...] = (
    kill_booking_replica,
    kill_worker,
    postgres_restart,
    redis_freeze_and_kill,
    sigterm_booking_replica,
    notification_down,
)
