"""The dispatcher (uow.Handlers) and the unit of work's event bookkeeping, on a fake connection: which handlers
an event reaches, in which order, and that flushing never dispatches an event twice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

from services.common.dbtypes import Conn
from services.common.domain_events import EventChanged, SeatsChanged
from services.common.uow import DomainEvent, Handlers, UnitOfWork

pytestmark = pytest.mark.asyncio


@dataclass(frozen=True)
class BookingMadeLike(SeatsChanged):
    guest_id: str


@dataclass(frozen=True)
class Unrelated(DomainEvent):
    event_id: UUID


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []

    def in_tx(self, tag: str) -> Any:
        async def handle(conn: Conn, event: DomainEvent, trace_id: str) -> None:
            self.calls.append(("tx", tag, (type(event).__name__, trace_id)))

        return handle

    def after(self, tag: str) -> Any:
        async def handle(event: DomainEvent) -> None:
            self.calls.append(("after", tag, type(event).__name__))

        return handle


FAKE_CONN = cast(Conn, object())  # the handlers here never touch it


async def test_an_event_reaches_its_own_handlers_then_those_of_its_base_classes() -> None:
    r = Recorder()
    handlers = (
        Handlers()
        .on(EventChanged, after_commit=r.after("event cache"))
        .on(BookingMadeLike, in_transaction=r.in_tx("booking outbox"), after_commit=r.after("booking"))
    )
    event = BookingMadeLike(uuid4(), True, "guest")
    await handlers.in_transaction(FAKE_CONN, [event], "req-1")
    await handlers.after_commit([event])
    assert r.calls == [
        ("tx", "booking outbox", ("BookingMadeLike", "req-1")),
        ("after", "booking", "BookingMadeLike"),
        ("after", "event cache", "BookingMadeLike"),  # subscribed to the base class only
    ]


async def test_merged_tables_keep_registration_order_and_ignore_unhandled_events() -> None:
    r = Recorder()
    own = Handlers().on(SeatsChanged, after_commit=r.after("own"))
    subscribers = Handlers().on(SeatsChanged, after_commit=r.after("subscriber"))
    merged = own.merged(subscribers)
    await merged.after_commit([SeatsChanged(uuid4(), True), Unrelated(uuid4())])
    assert [tag for _, tag, _ in r.calls] == ["own", "subscriber"]
    assert own.merged() is not own  # merging copies: registering on the result leaves the parts alone


async def test_flush_dispatches_each_event_once_and_in_emission_order() -> None:
    r = Recorder()
    handlers = Handlers().on(SeatsChanged, in_transaction=r.in_tx("seats")).on(Unrelated, in_transaction=r.in_tx("u"))
    tx = UnitOfWork(FAKE_CONN, None, handlers, None, "trace")
    tx.emit(SeatsChanged(uuid4(), True))
    await tx.flush()
    tx.emit(Unrelated(uuid4()))
    await tx.flush()
    await tx.flush()
    assert [tag for _, tag, _ in r.calls] == ["seats", "u"]
    assert len(tx.events) == 2  # after COMMIT every event is dispatched again, to the after-commit handlers
