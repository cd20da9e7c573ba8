"""Group commit lanes (services/booking/group_commit.py) with a fake writer: an idle key writes at once in the
caller's task with the caller's resource; what queues meanwhile is written as the next batch, in arrival order,
with incompatible items left for a later one; a fatal failure fails the queue behind it; a waiter that left is
dropped; the drainer holds one pooled resource across batches and gives it back when a result says it may be
broken or when the queue is empty."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from services.booking.group_commit import Lanes

pytestmark = pytest.mark.asyncio


class Writer:
    def __init__(self) -> None:
        self.batches: list[tuple[str, list[str], Any]] = []
        self.gate = asyncio.Event()
        self.fail_with: BaseException | None = None

    async def __call__(self, key: str, batch: list[str], resource: Any) -> Sequence[str | BaseException]:
        self.batches.append((key, list(batch), resource))
        await self.gate.wait()
        if self.fail_with is not None:
            return [self.fail_with for _ in batch]
        return [self._result(item) for item in batch]

    @staticmethod
    def _result(item: str) -> str | BaseException:
        if item.startswith("bad"):
            return ValueError(item)  # a refusal
        if item.endswith("lost"):
            return ConnectionResetError(item)  # the connection broke
        return f"done:{item}"


def one_per_guest(batch: list[str], item: str) -> bool:
    return item.split("/")[0] not in {b.split("/")[0] for b in batch}


async def test_an_idle_key_writes_at_once_and_the_queue_goes_in_one_batch_in_arrival_order():
    writer = Writer()
    lanes: Lanes[str, str, str] = Lanes(writer, one_per_guest)
    first = asyncio.create_task(lanes.submit("e1", "a/1", "conn-a"))
    await asyncio.sleep(0)
    assert lanes.busy("e1") and writer.batches == [("e1", ["a/1"], "conn-a")]
    queued = [asyncio.create_task(lanes.submit("e1", item)) for item in ("b/1", "c/1", "b/2", "bad/1", "d/1")]
    other_key = asyncio.create_task(lanes.submit("e2", "b/9", "conn-b"))  # another event: not queued behind e1
    await asyncio.sleep(0)
    assert ("e2", ["b/9"], "conn-b") in writer.batches
    writer.gate.set()
    assert await first == "done:a/1"
    assert await other_key == "done:b/9"
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert results[:3] == ["done:b/1", "done:c/1", "done:b/2"]
    assert isinstance(results[3], ValueError)  # one item's refusal fails no other
    assert results[4] == "done:d/1"
    e1 = [(batch, resource) for key, batch, resource in writer.batches if key == "e1"]
    # b/2 waits for the batch after b/1's (one per guest), keeping its place before later arrivals
    assert e1 == [(["a/1"], "conn-a"), (["b/1", "c/1", "bad/1", "d/1"], None), (["b/2"], None)]
    assert not lanes.busy("e1") and not lanes.busy("e2")
    assert lanes.largest == 4


async def test_a_fatal_failure_fails_the_queue_behind_it_at_once():
    writer = Writer()
    down = ConnectionError("database down")
    lanes: Lanes[str, str, str] = Lanes(writer, one_per_guest, fatal=lambda exc: isinstance(exc, ConnectionError))
    first = asyncio.create_task(lanes.submit("e", "a/1"))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(lanes.submit("e", item)) for item in ("b/1", "c/1")]
    await asyncio.sleep(0)
    writer.fail_with = down
    writer.gate.set()
    with pytest.raises(ConnectionError):
        await first
    for task in queued:
        with pytest.raises(ConnectionError):
            await task
    assert len(writer.batches) == 1  # nobody else tried the dead database
    assert not lanes.busy("e")


async def test_a_waiter_that_left_before_its_turn_is_not_written():
    writer = Writer()
    lanes: Lanes[str, str, str] = Lanes(writer, one_per_guest)
    first = asyncio.create_task(lanes.submit("e", "a/1"))
    await asyncio.sleep(0)
    gone = asyncio.create_task(lanes.submit("e", "b/1"))
    stays = asyncio.create_task(lanes.submit("e", "c/1"))
    await asyncio.sleep(0)
    gone.cancel()
    writer.gate.set()
    assert await first == "done:a/1"
    assert await stays == "done:c/1"
    assert [batch for _, batch, _ in writer.batches] == [["a/1"], ["c/1"]]


class Pool:
    """A stand-in for the connection pool: counts what is taken and given back."""

    def __init__(self) -> None:
        self.taken = 0
        self.returned = 0
        self.fail: BaseException | None = None
        self.release_gate = asyncio.Event()
        self.release_gate.set()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[str]:
        if self.fail is not None:
            raise self.fail
        self.taken += 1
        try:
            yield f"pooled-{self.taken}"
        finally:
            await self.release_gate.wait()
            self.returned += 1


def held_lanes() -> tuple[Writer, Pool, Lanes[str, str, str]]:
    """Lanes whose drainer holds a connection of a fresh pool; a ValueError (a refusal) keeps it."""
    writer, pool = Writer(), Pool()
    lanes: Lanes[str, str, str] = Lanes(
        writer, one_per_guest, hold=pool.connection, benign=lambda exc: isinstance(exc, ValueError)
    )
    return writer, pool, lanes


async def test_the_drainer_keeps_one_connection_across_batches_and_renews_it_after_a_failure():
    writer, pool, lanes = held_lanes()
    first = asyncio.create_task(lanes.submit("e", "a/1", "caller"))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(lanes.submit("e", item)) for item in ("b/1", "b/2", "bad/1", "b/3")]
    await asyncio.sleep(0)
    writer.gate.set()
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    assert results[:3] == ["done:a/1", "done:b/1", "done:b/2"]
    assert isinstance(results[3], ValueError) and results[4] == "done:b/3"
    # one pooled connection for the three queued batches (a refusal keeps it), given back once the queue is empty
    assert [resource for _, _, resource in writer.batches] == ["caller", "pooled-1", "pooled-1", "pooled-1"]
    assert (pool.taken, pool.returned) == (1, 1)
    assert not lanes.busy("e")

    # a result that is not benign (the connection may be broken) gives it back; the next batch takes a fresh one
    writer.gate.clear()
    first = asyncio.create_task(lanes.submit("e", "a/2", "caller"))
    await asyncio.sleep(0)
    broken = asyncio.create_task(lanes.submit("e", "c/lost"))
    after = asyncio.create_task(lanes.submit("e", "c/2"))  # the same guest: the batch after
    await asyncio.sleep(0)
    writer.gate.set()
    again = await asyncio.gather(first, broken, after, return_exceptions=True)
    assert again[0] == "done:a/2" and isinstance(again[1], ConnectionResetError) and again[2] == "done:c/2"
    assert [resource for _, _, resource in writer.batches[-3:]] == ["caller", "pooled-2", "pooled-3"]
    assert (pool.taken, pool.returned) == (3, 3)


async def test_no_connection_for_the_drainer_is_the_answer_of_its_batch():
    writer, pool, lanes = held_lanes()
    pool.fail = TimeoutError("no pooled connection in time")
    first = asyncio.create_task(lanes.submit("e", "a/1", "caller"))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(lanes.submit("e", item)) for item in ("b/1", "c/1")]
    await asyncio.sleep(0)
    writer.gate.set()
    assert await first == "done:a/1"
    for task in queued:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(task, 5)
    assert len(writer.batches) == 1 and not lanes.busy("e")


async def test_a_request_arriving_while_the_drainer_gives_its_connection_back_is_written():
    writer, pool, lanes = held_lanes()
    first = asyncio.create_task(lanes.submit("e", "a/1", "caller"))
    await asyncio.sleep(0)
    queued = asyncio.create_task(lanes.submit("e", "b/1"))
    await asyncio.sleep(0)
    pool.release_gate.clear()  # the drainer's release stalls (asyncpg's reset is a round trip)
    writer.gate.set()
    assert await first == "done:a/1"
    assert await asyncio.wait_for(queued, 5) == "done:b/1"
    late = asyncio.create_task(lanes.submit("e", "c/1", "late-caller"))
    assert await asyncio.wait_for(late, 5) == "done:c/1"  # not queued behind a drainer that is leaving
    pool.release_gate.set()
    await asyncio.sleep(0)
    assert pool.returned == 1 and not lanes.busy("e")


async def test_the_drainer_runs_outside_the_first_callers_context():
    seen: list[str] = []
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
    writer = Writer()

    async def run(key: str, batch: list[str], resource: Any) -> Sequence[str | BaseException]:
        seen.append(who.get())
        return await writer(key, batch, resource)

    lanes: Lanes[str, str, str] = Lanes(run, one_per_guest)

    async def caller(item: str) -> str:
        who.set(item)
        return await lanes.submit("e", item)

    first = asyncio.create_task(caller("a/1"))
    await asyncio.sleep(0)
    queued = asyncio.create_task(caller("b/1"))
    await asyncio.sleep(0)
    writer.gate.set()
    assert list(await asyncio.gather(first, queued)) == ["done:a/1", "done:b/1"]
    assert seen == ["a/1", "nobody"]  # the queued batch is not written under a/1's deadline or request id
