"""Group commit per key (an event): requests that arrive while a batch of their key is being written are written
together, as the next batch, in one transaction.

There is no timer: an idle key runs a request at once, in the caller's own task (no wait, no extra task); only
what queued while the previous batch was committing waits, and for exactly that long. A hot event's requests thus
pay one round trip and one commit (one WAL flush with durable commits) per batch instead of one each, and the
event row's lock is taken once per batch.

Which items may share a batch is the caller's rule (``compatible``: e.g. one request per guest, the same event
times); the others stay queued, in arrival order, for a later batch. ``run`` gets a batch in arrival order and
returns one result per item (a value or an exception instance: a refusal of one item never fails another); it
must not raise. A waiter that goes away (its RPC cancelled) before its batch is taken is dropped from the queue;
once taken, its write completes (like a transaction whose client vanished after sending COMMIT). A batch that
fails with a ``fatal`` error (the database is down) fails the queue behind it at once: answers stay fast.

The queue is written by a drainer task, which serves many callers: it runs in a context of its own, so no one
caller's context variables (its deadline, its user, its request id) bound or label the others' writes. With
``hold`` (a factory of an async context manager, e.g. a pooled database connection) the drainer takes the resource
once and keeps it for every batch it writes back to back — a hot event's batches pay no pool acquire and release
(asyncpg's release resets the connection: one more round trip) between them. A batch with a result that is not
``benign`` (anything but an answer such as a refusal: the resource may be broken) gives it back, and the next batch
takes a fresh one; a failure to take it is the answer of every item of the batch.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

__all__ = ["Lanes"]


@dataclass
class _Lane(Generic[T, R]):
    queue: deque[tuple[T, asyncio.Future[R]]] = field(default_factory=deque)
    drainer: asyncio.Task[None] | None = None


class Lanes(Generic[K, T, R]):
    def __init__(
        self,
        run: Callable[[K, list[T], Any], Awaitable[Sequence[R | BaseException]]],
        compatible: Callable[[list[T], T], bool],
        max_batch: int = 200,
        fatal: Callable[[BaseException], bool] = lambda exc: False,
        hold: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
        benign: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        self._run = run
        self._compatible = compatible
        self._max_batch = max_batch
        self._fatal = fatal
        self._hold = hold
        self._benign = benign
        self._lanes: dict[K, _Lane[T, R]] = {}
        self.batches = 0
        """Batches written (tests and benchmarks read it)."""
        self.largest = 0
        """The largest batch written."""

    def busy(self, key: K) -> bool:
        """Whether a batch of ``key`` is being written (then :meth:`submit` queues)."""
        return key in self._lanes

    def queued(self, key: K) -> int:
        """How many requests of ``key`` wait for its next batch."""
        lane = self._lanes.get(key)
        return len(lane.queue) if lane is not None else 0

    async def submit(self, key: K, item: T, resource: Any = None) -> R:
        """``item``'s result. ``resource`` (e.g. the caller's database connection) is handed to ``run`` when the
        item is written at once, alone, in the caller's task; a queued item is written with ``None``."""
        lane = self._lanes.get(key)
        if lane is not None:  # a batch of this key is being written: join the next one
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            lane.queue.append((item, future))
            return await future
        lane = self._lanes[key] = _Lane()
        try:
            (result,) = await self._write(key, [item], resource)
            self._fail_queue(lane, [result])
        finally:
            self._next(key, lane)
        if isinstance(result, BaseException):
            raise result
        return result

    async def _write(self, key: K, batch: list[T], resource: Any = None) -> Sequence[R | BaseException]:
        self.batches += 1
        self.largest = max(self.largest, len(batch))
        return await self._run(key, batch, resource)

    def _next(self, key: K, lane: _Lane[T, R]) -> None:
        """After a batch: the queued requests go on in a task of their own (the finished caller answers now)."""
        if lane.queue:
            lane.drainer = asyncio.get_running_loop().create_task(self._drain(key, lane), context=contextvars.Context())
        else:
            del self._lanes[key]

    async def _drain(self, key: K, lane: _Lane[T, R]) -> None:
        held: AsyncExitStack | None = None
        resource: Any = None
        try:
            while lane.queue:
                taken = self._take(lane)
                if not taken:
                    continue
                results: Sequence[R | BaseException]
                if self._hold is not None and held is None:
                    try:
                        held = AsyncExitStack()
                        resource = await held.enter_async_context(self._hold())
                    except Exception as exc:  # e.g. no pooled connection in time: the batch's answer
                        held = None
                        self._answer(lane, taken, [exc for _ in taken])
                        continue
                results = await self._write(key, [item for item, _ in taken], resource)
                if held is not None and any(isinstance(r, BaseException) and not self._benign(r) for r in results):
                    stack, held, resource = held, None, None
                    await stack.aclose()  # the connection may be broken: the next batch takes a fresh one
                self._answer(lane, taken, results)
        except BaseException as exc:  # pragma: no cover - run() never raises; a cancelled drainer fails its waiters
            for _, future in lane.queue:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            lane.queue.clear()
            raise
        finally:
            # The lane goes first: a request arriving while the resource is given back starts a lane of its own
            # (it would otherwise join a queue nobody drains any more).
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            if held is not None:
                await held.aclose()

    def _answer(
        self, lane: _Lane[T, R], taken: list[tuple[T, asyncio.Future[R]]], results: Sequence[R | BaseException]
    ) -> None:
        self._fail_queue(lane, results)
        for (_, future), result in zip(taken, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _fail_queue(self, lane: _Lane[T, R], results: Sequence[R | BaseException]) -> None:
        """A batch that failed for a reason that fails every write (the database is unreachable) fails the
        requests queued behind it at once, instead of each batch after it waiting for the same failure."""
        failure = next((r for r in results if isinstance(r, BaseException) and self._fatal(r)), None)
        if failure is None:
            return
        for _, future in lane.queue:
            if not future.done():
                future.set_exception(failure)
        lane.queue.clear()

    def _take(self, lane: _Lane[T, R]) -> list[tuple[T, asyncio.Future[R]]]:
        """The next batch: queued items in arrival order that fit together; the rest keep their places."""
        taken: list[tuple[T, asyncio.Future[R]]] = []
        items: list[T] = []
        kept: deque[tuple[T, asyncio.Future[R]]] = deque()
        while lane.queue:
            item, future = lane.queue.popleft()
            if future.done():  # the caller went away before its turn
                continue
            if len(taken) < self._max_batch and (not items or self._compatible(items, item)):
                taken.append((item, future))
                items.append(item)
            else:
                kept.append((item, future))
        lane.queue = kept
        return taken
