"""Deadlines are honoured: when a client's deadline passes, the server stops the work — the database statement is
cancelled (it never completes later) — and waits for a pooled connection end before the deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import ClassVar

import asyncpg
import grpc
import pytest
from cowatch.event.v1 import resources_pb2, service_pb2
from google.protobuf import field_mask_pb2

from services.event.app import EventSettings
from services.event.domain import parse_event_name
from tests.support.api import expect_error, new_caller
from tests.support.factories import create_request
from tests.support.servers import backends, event_server, wait_until

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]


class DeadlineTestSettings(EventSettings):
    service_name: ClassVar[str] = "cowatch-event-deadline-test"  # the Postgres application_name we watch


def rename(name: str, title: str) -> service_pb2.UpdateEventRequest:
    return service_pb2.UpdateEventRequest(
        event=resources_pb2.Event(name=name, title=title), update_mask=field_mask_pb2.FieldMask(paths=["title"])
    )


async def test_a_passed_deadline_cancels_the_running_statement(database_url: str, db_pool: asyncpg.Pool):
    app_name = DeadlineTestSettings.service_name
    async with event_server(database_url, settings_cls=DeadlineTestSettings) as (_running, events):
        host = new_caller()
        created = await events.CreateEvent(create_request(datetime.now(UTC)), metadata=host.metadata)
        event_id = parse_event_name(created.name)
        async with db_pool.acquire() as locker, db_pool.acquire() as watcher:
            async with locker.transaction():
                await locker.execute("SELECT 1 FROM event.events WHERE id = $1 FOR UPDATE", event_id)
                started = time.perf_counter()
                update = asyncio.ensure_future(
                    events.UpdateEvent(rename(created.name, "too late"), metadata=host.metadata, timeout=0.8)
                )
                # the server's statement is really waiting in Postgres...
                await wait_until(lambda: backends(watcher, app_name, waiting_on_lock=True), within=0.7, interval=0.02)
                err = await expect_error(update)
                assert err.code is grpc.StatusCode.DEADLINE_EXCEEDED
                assert time.perf_counter() - started < 1.5
                # ...and is gone shortly after the deadline, while the lock is still held
                await wait_until(
                    lambda: _not(backends(watcher, app_name, waiting_on_lock=True)), within=1.0, interval=0.02
                )
            # lock released: had the statement survived, the update would apply now
            await asyncio.sleep(0.3)
            row = await watcher.fetchrow("SELECT title, version FROM event.events WHERE id = $1", event_id)
            assert row is not None and (row["title"], row["version"]) == (created.title, 1)


async def test_waiting_for_a_pooled_connection_ends_before_the_deadline(database_url: str, db_pool: asyncpg.Pool):
    """With the only connection busy and a long acquire timeout, the wait is cut to the caller's deadline and the
    answer is UNAVAILABLE (retryable), not a DEADLINE_EXCEEDED from a request nobody answered."""
    async with event_server(database_url, db_pool_min_size=1, db_pool_max_size=1, db_acquire_timeout_seconds=30) as (
        _running,
        events,
    ):
        host = new_caller()
        created = await events.CreateEvent(create_request(datetime.now(UTC)), metadata=host.metadata)
        async with db_pool.acquire() as locker, locker.transaction():
            await locker.execute("SELECT 1 FROM event.events WHERE id = $1 FOR UPDATE", parse_event_name(created.name))
            holder = asyncio.ensure_future(
                events.UpdateEvent(rename(created.name, "holder"), metadata=host.metadata, timeout=10)
            )
            await asyncio.sleep(0.3)  # it holds the pool's only connection, waiting for the lock
            started = time.perf_counter()
            err = await expect_error(
                events.GetEvent(service_pb2.GetEventRequest(name=created.name), metadata=host.metadata, timeout=1.0)
            )
            elapsed = time.perf_counter() - started
            assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
            assert 0.7 < elapsed < 1.0
        await holder


async def _not(value: Awaitable[int]) -> bool:
    return not await value
