"""The worker's retention job against real Postgres: sent and dead outbox rows and request ids past their period
are deleted in small batches, nothing else is, and several workers purge side by side."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio

from services.common.clock import ManualClock
from services.notification.metrics import WorkerMetrics
from services.notification.retention import Retention, RetentionConfig
from tests.support.notify import NotifyEnv, notify_env

pytestmark = pytest.mark.asyncio(loop_scope="session")

WEEK = timedelta(days=7)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(pg_server_url: str) -> AsyncIterator[NotifyEnv]:
    async with notify_env(pg_server_url) as e:
        yield e


async def add_outbox(env: NotifyEnv, tag: str, state: str, age: timedelta, n: int = 1) -> None:
    """``n`` rows in ``state``, written (and, if SENT, sent) ``age`` ago."""
    await env.pool.execute(
        """
        INSERT INTO notify.outbox (dedupe_key, template_id, recipients, params, state, create_time, sent_time)
        SELECT $1 || '/' || i, 'event_cancelled', ARRAY['u-1'], '{"place_address": "Torstr. 1"}', $2,
               now() - $3::interval, CASE WHEN $2 = 'SENT' THEN now() - $3::interval END
        FROM generate_series(1, $4) AS i
        """,
        tag,
        state,
        age,
        n,
    )


async def add_request_ids(env: NotifyEnv, caller: str, age: timedelta, n: int = 1) -> None:
    await env.pool.execute(
        """
        INSERT INTO idem.requests (caller_id, method, request_id, request_hash, create_time)
        SELECT $1, 'CreateBooking', gen_random_uuid(), '\\x00', now() - $2::interval FROM generate_series(1, $3)
        """,
        caller,
        age,
        n,
    )


async def count_outbox(env: NotifyEnv, tag: str) -> int:
    return int(await env.pool.fetchval("SELECT count(*) FROM notify.outbox WHERE dedupe_key LIKE $1 || '/%'", tag))


async def count_request_ids(env: NotifyEnv, caller: str) -> int:
    return int(await env.pool.fetchval("SELECT count(*) FROM idem.requests WHERE caller_id = $1", caller))


def retention(env: NotifyEnv, *, batch_size: int = 500, clock: ManualClock | None = None) -> Retention:
    config = RetentionConfig(outbox_sent=WEEK, outbox_dead=timedelta(days=30), request_ids=WEEK, batch_size=batch_size)
    return Retention(env.pool, clock or env.clock, config, WorkerMetrics())


async def test_rows_past_their_period_are_deleted_in_batches_and_nothing_else(env: NotifyEnv):
    t = uuid.uuid4().hex[:8]
    await add_outbox(env, f"{t}-old-sent", "SENT", WEEK + timedelta(hours=1), n=23)
    await add_outbox(env, f"{t}-new-sent", "SENT", WEEK - timedelta(hours=1))
    await add_outbox(env, f"{t}-old-dead", "DEAD", timedelta(days=31), n=3)
    await add_outbox(env, f"{t}-new-dead", "DEAD", timedelta(days=29))
    await add_outbox(env, f"{t}-old-pending", "PENDING", timedelta(days=60))  # never deleted: not sent yet
    await add_request_ids(env, f"{t}-old", WEEK + timedelta(minutes=5), n=11)
    await add_request_ids(env, f"{t}-new", WEEK - timedelta(minutes=5))

    run = await retention(env, batch_size=5).run_once()  # several batches per kind

    assert (run.outbox_sent, run.outbox_dead, run.request_ids) >= (23, 3, 11)
    assert await count_outbox(env, f"{t}-old-sent") == 0
    assert await count_outbox(env, f"{t}-new-sent") == 1
    assert await count_outbox(env, f"{t}-old-dead") == 0
    assert await count_outbox(env, f"{t}-new-dead") == 1
    assert await count_outbox(env, f"{t}-old-pending") == 1
    assert await count_request_ids(env, f"{t}-old") == 0
    assert await count_request_ids(env, f"{t}-new") == 1


async def test_moving_time_past_the_period_purges_what_was_recent(env: NotifyEnv):
    t = uuid.uuid4().hex[:8]
    await add_outbox(env, f"{t}-sent", "SENT", timedelta(0))
    await add_request_ids(env, t, timedelta(0))
    later = ManualClock(env.clock.now() + WEEK + timedelta(minutes=1))
    await retention(env, clock=later).run_once()
    assert await count_outbox(env, f"{t}-sent") == 0 and await count_request_ids(env, t) == 0


async def test_several_workers_purge_side_by_side_without_waiting_or_double_counting(env: NotifyEnv):
    t = uuid.uuid4().hex[:8]
    await add_outbox(env, t, "SENT", timedelta(days=8), n=3000)
    await add_request_ids(env, t, timedelta(days=8), n=3000)
    runs = await asyncio.gather(*(retention(env, batch_size=50).run_once() for _ in range(4)))
    assert await count_outbox(env, t) == 0 and await count_request_ids(env, t) == 0
    # each row was deleted by exactly one of them (other tests' rows are gone already)
    assert sum(r.outbox_sent for r in runs) == 3000
    assert sum(r.request_ids for r in runs) == 3000
    assert sum(1 for r in runs if r.outbox_sent) > 1  # they really shared the work


async def test_the_worker_runs_retention_on_its_interval(env: NotifyEnv):
    t = uuid.uuid4().hex[:8]
    await add_outbox(env, t, "SENT", timedelta(minutes=2))
    await add_request_ids(env, t, timedelta(hours=2))
    async with env.worker(
        retention_interval_seconds=0.2, outbox_sent_retention_seconds=60, idempotency_retention_seconds=3600
    ) as worker:
        async with asyncio.timeout(10):
            while True:
                if not (await count_outbox(env, t) or await count_request_ids(env, t)):
                    break
                await asyncio.sleep(0.05)
        assert worker.metrics.purged.labels("outbox_sent")._value.get() >= 1
