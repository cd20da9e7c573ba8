"""The outbox relay over real gRPC to the notification stand-in: wake-up, retries, outage, dead letters, races.

Every test asserts the same invariant at the end: each dedupe key reached the notification service (was
accepted as new) exactly once.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio

from services.common.logging import configure_logging
from services.notification import outbox
from services.notification.metrics import WorkerMetrics
from services.notification.relay import Outcome, Relay, RelayConfig
from tests.support.api import new_caller
from tests.support.bookings import book, new_event
from tests.support.notify import (
    NotifyEnv,
    assert_each_key_once,
    notify_env,
    outbox_row,
    params,
    wait_all_sent,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(pg_server_url: str) -> AsyncIterator[NotifyEnv]:
    async with notify_env(pg_server_url) as e:
        yield e


async def enqueue(env: NotifyEnv, n: int = 1, *, template: str = "event_cancelled", request_id: str = "") -> list[str]:
    """Commit ``n`` messages (one transaction); returns their dedupe keys."""
    prefix = uuid.uuid4().hex[:8]
    keys = [f"test/{prefix}/{i}" for i in range(n)]
    async with env.pool.acquire() as conn, conn.transaction():
        for key in keys:
            await outbox.enqueue(conn, outbox.Message(key, template, [f"u-{prefix}"], params()), request_id=request_id)
    return keys


async def wait_state(env: NotifyEnv, key: str, state: str, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if (await outbox_row(env.pool, key))["state"] == state:
                return
            await asyncio.sleep(0.02)


def delivered(env: NotifyEnv, keys: list[str]) -> bool:
    return all(k in env.inbox.by_key for k in keys)


async def test_a_committed_message_is_sent_at_once_woken_by_notify(env: NotifyEnv):
    # The poll interval is far longer than the test: only LISTEN/NOTIFY can wake the worker in time.
    async with env.worker(poll_interval_seconds=60):
        started = time.monotonic()
        (key,) = await enqueue(env, request_id="req-notify-1")
        await env.inbox.wait_for(lambda inbox: key in inbox.by_key, within=2)
        assert time.monotonic() - started < 1.0
    d = env.inbox.by_key[key]
    assert d.template_id == "event_cancelled"
    assert d.recipients[0].startswith("users/u-")  # outbox holds user ids; the contract wants users/{id}
    assert d.params["event_title"] == "Solaris night"
    assert d.request_id == "req-notify-1"  # x-request-id of the RPC that wrote the row
    row = await outbox_row(env.pool, key)
    assert row["state"] == "SENT" and row["attempts"] == 1 and row["sent_time"] is not None
    assert_each_key_once(env.inbox)


async def test_without_notify_the_poll_still_finds_the_message(env: NotifyEnv):
    async with env.worker(poll_interval_seconds=0.5):
        await asyncio.sleep(0.2)  # the worker is idle, waiting for a NOTIFY or its next poll
        prefix = uuid.uuid4().hex[:8]
        key = f"test/{prefix}/silent"
        started = time.monotonic()
        async with env.pool.acquire() as conn, conn.transaction():
            # Triggers off for this transaction only: the insert sends no NOTIFY (a lost wake-up).
            await conn.execute("SET LOCAL session_replication_role = replica")
            await outbox.enqueue(conn, outbox.Message(key, "event_cancelled", ["u-silent"], params()))
        await env.inbox.wait_for(lambda inbox: key in inbox.by_key, within=3)
        assert time.monotonic() - started <= 0.5 + 0.5  # the next poll, not the lease or a retry
    assert_each_key_once(env.inbox)


async def test_failed_sends_are_retried_with_backoff_until_they_get_through(env: NotifyEnv):
    metrics_before = None
    async with env.worker(backoff_base_seconds=0.1, backoff_cap_seconds=1.0) as worker:
        metrics_before = worker.metrics
        # The service answers, but refuses this message twice: tries count, and come back later each time.
        env.standin.fail_next(2, grpc.StatusCode.RESOURCE_EXHAUSTED)
        started = time.monotonic()
        (key,) = await enqueue(env)
        await env.inbox.wait_for(lambda inbox: key in inbox.by_key, within=5)
        elapsed = time.monotonic() - started
    row = await outbox_row(env.pool, key)
    assert row["state"] == "SENT"
    assert row["attempts"] == 3
    # Two waits: >= 50 % of 0.1 s, then >= 50 % of 0.2 s (jittered exponential backoff).
    assert elapsed >= 0.05 + 0.1
    assert metrics_before is not None
    assert metrics_before.failed.labels("event_cancelled", "RESOURCE_EXHAUSTED")._value.get() == 2
    assert_each_key_once(env.inbox)


async def test_after_max_attempts_a_message_is_dead_lettered_with_metric_and_log(env: NotifyEnv):
    logs = io.StringIO()
    configure_logging(stream=logs)
    try:
        async with env.worker(max_attempts=3) as worker:
            env.standin.fail_next(3, grpc.StatusCode.INTERNAL)
            (key,) = await enqueue(env)
            await wait_state(env, key, "DEAD")
            assert worker.metrics.dead_count() == 1
    finally:
        configure_logging()
    row = await outbox_row(env.pool, key)
    assert row["attempts"] == 3
    assert row["last_error"].startswith("INTERNAL")
    assert key not in env.inbox.by_key
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    dead = [line for line in lines if line["event"] == "outbox message dead-lettered"]
    assert len(dead) == 1
    assert dead[0]["dedupe_key"] == key and dead[0]["attempts"] == 3 and dead[0]["level"] == "error"


async def test_a_message_the_service_can_never_accept_is_dead_lettered_at_once(env: NotifyEnv):
    async with env.worker(max_attempts=10) as worker:
        (key,) = await enqueue(env, template="no_such_template")
        await wait_state(env, key, "DEAD")
        assert worker.metrics.dead_count() == 1
    row = await outbox_row(env.pool, key)
    assert row["attempts"] == 1
    assert "INVALID_ARGUMENT" in row["last_error"]


async def test_service_down_for_a_while_bookings_succeed_and_everything_arrives_once_after(env: NotifyEnv):
    host, guests = new_caller("Host"), [new_caller(f"Guest {i}") for i in range(5)]
    async with env.worker(max_attempts=2, outage_probe_max_seconds=0.2) as worker:
        await env.standin.stop()
        event = await new_event(env.events, env.clock, host, capacity=10)
        bookings = [await env.bookings.CreateBooking(book(event, 1), metadata=g.metadata) for g in guests]
        assert len(bookings) == 5  # the user's action never waits for, or fails because of, the mail
        await asyncio.sleep(0.6)  # many probes fail meanwhile; with max_attempts=2 a counted try would kill them
        pending = await env.pool.fetch(
            "SELECT state, attempts, last_error FROM notify.outbox WHERE params->>'event' = $1", event.name
        )
        assert len(pending) == 10  # confirmation + "new guest" per booking
        assert {r["state"] for r in pending} == {"PENDING"}
        assert any((r["last_error"] or "").startswith("UNAVAILABLE") for r in pending)
        assert worker.metrics.service_up._value.get() == 0
        await env.standin.start()  # same port, same memory
        await wait_all_sent(env.pool, within=10)
        assert worker.metrics.service_up._value.get() == 1
    got = env.inbox.find(event=event.name)
    assert sorted(d.template_id for d in got) == ["booking_confirmed"] * 5 + ["booking_new_guest"] * 5
    assert {d.user_ids[0] for d in got if d.template_id == "booking_confirmed"} == {g.id for g in guests}
    assert {d.user_ids[0] for d in got if d.template_id == "booking_new_guest"} == {host.id}
    assert (
        await env.pool.fetchval(
            "SELECT count(*) FROM notify.outbox WHERE state = 'DEAD' AND params->>'event' = $1", event.name
        )
        == 0
    )
    assert_each_key_once(env.inbox)


async def test_a_slow_owner_whose_lease_expired_cannot_undo_the_new_owners_work(env: NotifyEnv):
    (key,) = await enqueue(env)
    metrics = WorkerMetrics()
    # Worker A claims the row, then stalls past its lease (its notifier is never called here).
    client = env.standin_client()
    a = Relay(env.pool, client, RelayConfig(lease_seconds=0.2, max_attempts=1), metrics)
    claimed = await a.claim()
    assert [c.dedupe_key for c in claimed] == [key]
    await asyncio.sleep(0.3)
    async with env.worker():  # B claims the row again and delivers it
        await env.inbox.wait_for(lambda inbox: key in inbox.by_key, within=3)
        await wait_all_sent(env.pool)
    # A's failure arrives late (with max_attempts=1 it would dead-letter the row) and must change nothing.
    await a.record([Outcome(claimed[0], ok=False, code="INTERNAL", error="INTERNAL: boom")])
    await client.close()
    row = await outbox_row(env.pool, key)
    assert row["state"] == "SENT" and row["last_error"] is None
    assert metrics.dead_count() == 0


async def test_racing_workers_send_every_message_exactly_once(env: NotifyEnv):
    keys = []
    for _ in range(5):
        keys += await enqueue(env, 40)
    async with env.worker(batch_size=7), env.worker(batch_size=11), env.worker(batch_size=13):
        await env.inbox.wait_for(lambda inbox: delivered(env, keys), within=15)
        await wait_all_sent(env.pool)
    assert_each_key_once(env.inbox)
