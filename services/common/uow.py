"""The unit of work: one per write request, owning its connection, its transaction, its AIP-155 request id and
the domain events its use case emits.

    async with uow(pool, dispatcher, request=cmd.request, trace_id=cmd.trace_id) as tx:
        if tx.replay is not None:            # same request id, same request: answer as the first call did
            return await load(tx.conn, tx.replay)
        event = await repository.get(tx.conn, ...)          # load
        decision = domain.decide(event, ...)                # decide (pure)
        await repository.write(tx.conn, decision)           # write
        tx.emit(SeatsChanged(event.id))                     # emit
        tx.record(names.event(event.id))

On entry it takes a connection (or uses the one it is given), begins the transaction and claims the request id
(:mod:`services.common.idempotency`): ``tx.replay`` is then the resource name an earlier identical request
produced, or ``None`` when this call does the work. On normal exit it hands every emitted event, in order, to
``dispatcher.in_transaction`` (outbox rows, reminder changes: same transaction as the change), records the
request id's resource, commits, and only then hands the events to ``dispatcher.after_commit`` (cache
invalidations: a reader must never reload the old row after a stale entry was dropped). An exception rolls
everything back; the events already handed to ``in_transaction`` then go to ``dispatcher.after_rollback`` (cache
holds taken before COMMIT are released: :mod:`services.common.cache`).

``trace_id`` is the request's ``x-request-id``: it is given explicitly (commands carry it) and stamped on every
outbox row so a delivered mail can be traced to the request that caused it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import asyncpg

from services.common import db, idempotency
from services.common.dbtypes import Conn, Pool
from services.common.idempotency import RequestKey

__all__ = ["NO_HANDLERS", "Dispatcher", "DomainEvent", "Handlers", "UnitOfWork", "uow"]


class DomainEvent:
    """Base of every domain event: something that happened, named in the past tense, immutable."""

    __slots__ = ()


E = TypeVar("E", bound=DomainEvent)
InTransaction = Callable[[Conn, DomainEvent, str], Awaitable[None]]
AfterCommit = Callable[[DomainEvent], Awaitable[None]]


class Dispatcher(Protocol):
    async def in_transaction(self, conn: Conn, events: Sequence[DomainEvent], trace_id: str) -> None:
        """Turn events into writes of the same transaction (outbox messages, reminder rows)."""

    async def after_commit(self, events: Sequence[DomainEvent]) -> None:
        """Turn events into what may only happen once they are durable (cache invalidations). Never raises."""

    async def after_rollback(self, events: Sequence[DomainEvent]) -> None:
        """The transaction that dispatched these ``in_transaction`` rolled back (release cache holds). Never
        raises."""


@dataclass
class Handlers:
    """The dispatcher: a table of handlers per event type, for each of the two moments. An event reaches the
    handlers of its class and of each base class (most specific first).

    Each domain contributes the handlers for what it owns (its outbox messages, its cache entries) with
    :meth:`on`; a process's ``app`` combines the tables of the domains it runs with :meth:`merged`. Handlers run
    in registration order; an event nobody handles is fine (it is a fact, not a command).
    """

    _in_tx: dict[type[DomainEvent], list[InTransaction]] = field(default_factory=dict)
    _after: dict[type[DomainEvent], list[AfterCommit]] = field(default_factory=dict)
    _rollback: dict[type[DomainEvent], list[AfterCommit]] = field(default_factory=dict)

    def on(
        self,
        event_type: type[E],
        *,
        in_transaction: Callable[[Conn, E, str], Awaitable[None]] | None = None,
        after_commit: Callable[[E], Awaitable[None]] | None = None,
        after_rollback: Callable[[E], Awaitable[None]] | None = None,
    ) -> Handlers:
        if in_transaction is not None:
            self._in_tx.setdefault(event_type, []).append(in_transaction)  # type: ignore[arg-type]
        if after_commit is not None:
            self._after.setdefault(event_type, []).append(after_commit)  # type: ignore[arg-type]
        if after_rollback is not None:
            self._rollback.setdefault(event_type, []).append(after_rollback)  # type: ignore[arg-type]
        return self

    def merged(self, *others: Handlers) -> Handlers:
        out = Handlers()
        for table in (self, *others):
            for t, fs in table._in_tx.items():
                out._in_tx.setdefault(t, []).extend(fs)
            for t, gs in table._after.items():
                out._after.setdefault(t, []).extend(gs)
            for t, gs in table._rollback.items():
                out._rollback.setdefault(t, []).extend(gs)
        return out

    async def in_transaction(self, conn: Conn, events: Sequence[DomainEvent], trace_id: str) -> None:
        for event in events:
            for t in type(event).__mro__:
                for handle in self._in_tx.get(t, ()):
                    await handle(conn, event, trace_id)

    async def after_commit(self, events: Sequence[DomainEvent]) -> None:
        await self._after_end(self._after, events)

    async def after_rollback(self, events: Sequence[DomainEvent]) -> None:
        await self._after_end(self._rollback, events)

    @staticmethod
    async def _after_end(table: dict[type[DomainEvent], list[AfterCommit]], events: Sequence[DomainEvent]) -> None:
        for event in events:
            for t in type(event).__mro__:
                for handle in table.get(t, ()):
                    await handle(event)


NO_HANDLERS = Handlers()


class UnitOfWork:
    """One request's transaction: use :func:`uow`, not this constructor."""

    def __init__(
        self, conn: Conn, replay: str | None, dispatcher: Dispatcher, request: RequestKey | None, trace_id: str
    ) -> None:
        self.conn = conn
        self.replay = replay
        """The resource name an earlier request with the same request id produced (``""`` if it recorded none),
        or ``None``: this call does the work."""
        self.events: list[DomainEvent] = []
        self._dispatcher = dispatcher
        self._request = request
        self._trace_id = trace_id
        self._resource_name: str | None = None
        self._dispatched = 0
        self._recorded = False

    @property
    def dispatched(self) -> Sequence[DomainEvent]:
        """The events already handed to the dispatcher's ``in_transaction``."""
        return self.events[: self._dispatched]

    def emit(self, *events: DomainEvent) -> None:
        """Something happened; the dispatcher acts on it in the transaction and after COMMIT."""
        self.events.extend(events)

    def record(self, resource_name: str) -> None:
        """The resource this request produced: a retry with the same request id gets it back (``replay``)."""
        self._resource_name = resource_name

    async def flush(self) -> None:
        """Write now what the events emitted so far cause in the transaction (and the request id's record).

        Normally that happens at the end of the block; a use case whose last statement must stay last (the
        booking's seat UPDATE, which holds the event row's lock until COMMIT) flushes before it.
        """
        pending = self.events[self._dispatched :]
        self._dispatched = len(self.events)
        if pending:
            await self._dispatcher.in_transaction(self.conn, pending, self._trace_id)
        if self._resource_name is not None and not self._recorded:
            self._recorded = True
            await idempotency.record(self.conn, self._request, self._resource_name)


@asynccontextmanager
async def uow(
    source: Pool | Conn,
    dispatcher: Dispatcher = NO_HANDLERS,
    *,
    request: RequestKey | None = None,
    trace_id: str = "",
) -> AsyncIterator[UnitOfWork]:
    """One transaction on a pooled connection (``source`` a pool) or on a connection the caller already holds."""
    tx: UnitOfWork | None = None
    try:
        async with _connection(source) as conn, conn.transaction():
            tx = UnitOfWork(conn, await idempotency.claim(conn, request), dispatcher, request, trace_id)
            yield tx
            if tx.replay is not None:
                return  # a replay writes nothing, and emits nothing
            await tx.flush()
    except BaseException:
        if tx is not None and tx.dispatched:
            await dispatcher.after_rollback(tx.dispatched)
        raise
    await dispatcher.after_commit(tx.events)


@asynccontextmanager
async def _connection(source: Pool | Conn) -> AsyncIterator[Conn]:
    if isinstance(source, asyncpg.Pool):
        async with db.connection(source) as conn:
            yield conn
    else:
        yield source
