"""Group commit lanes (services/booking/group_commit.py) with a fake writer: an idle key writes at once in the
caller's task with the caller's resource; what queues meanwhile is written as the next batch, in arrival order,
with incompatible items left for a later one; a fatal failure fails the queue behind it; a waiter that left is
dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
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
        return [f"done:{item}" if not item.startswith("bad") else ValueError(item) for item in batch]


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
