"""The worker and a PostgreSQL that is down or crashes: it starts anyway, and delivers what was committed once the
database is back (its pool and its LISTEN connection reconnect by themselves). A private server, killed at will."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
import pytest

from services.dev.embedded_pg import EmbeddedPostgres
from services.notification import outbox
from services.notification.metrics import WorkerMetrics
from services.notification.settings import WorkerSettings
from services.notification.standin import StandIn
from services.notification.worker import Worker
from tests.support.db import create_migrated_database
from tests.support.notify import FAST_WORKER, assert_each_key_once, params

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def commit_message(url: str) -> str:
    key = f"db-fault/{uuid.uuid4().hex}"
    conn = await asyncpg.connect(url)
    try:
        await outbox.enqueue(conn, outbox.Message(key, "event_cancelled", ["u-db"], params()))
    finally:
        await conn.close()
    return key


async def test_worker_survives_postgres_down_at_start_and_a_crash(pg_factory: Callable[..., EmbeddedPostgres]):
    pg = pg_factory()
    _, url = await create_migrated_database(pg.url)
    pg.stop()
    standin = StandIn(log_messages=False)
    await standin.start(0)
    settings = WorkerSettings(
        database_url=url,
        notification_address=standin.address,
        **{**FAST_WORKER, "db_connect_timeout_seconds": 0.5, "db_acquire_timeout_seconds": 0.5},
    )
    worker = Worker(settings, metrics=WorkerMetrics())
    await worker.start()  # Postgres is down: not fatal
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.3)
        assert not task.done()
        await asyncio.to_thread(pg.start)
        first = await commit_message(url)
        await standin.inbox.wait_for(lambda inbox: first in inbox.by_key, within=10)

        await asyncio.to_thread(pg.kill)  # a crash: every connection dies
        await asyncio.to_thread(pg.start)
        second = await commit_message(url)
        await standin.inbox.wait_for(lambda inbox: second in inbox.by_key, within=10)
        await worker.wait_listening(within=5)  # and it listens again (the next message is not left to the poll)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await worker.close()
        await standin.stop(0)
    assert_each_key_once(standin.inbox)
