"""The worker as a real process (``python -m services.notification.worker``): killed with SIGKILL mid-batch it
loses nothing, sends nothing twice and its claims are taken over one short lease later; alive, it keeps its claims
through a batch longer than the lease (heartbeat); SIGTERM makes it finish the batch in hand and exit 0; it runs the
review domain's reveal job."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from services.notification import outbox
from services.notification.settings import WorkerSettings
from services.review import repository as reviews
from services.review.domain import SubjectType
from tests.support.notify import NotifyEnv, assert_each_key_once, notify_env, params, signal_worker, wait_all_sent

pytestmark = pytest.mark.asyncio(loop_scope="session")

N = 300
# Slow sends, few in flight: a batch takes a while, so there is a "middle of a batch" to kill it in.
SLOW: dict[str, object] = {
    "batch_size": 20,
    "send_concurrency": 4,
    "lease_seconds": 0.6,
    "notification_timeout_seconds": 0.4,
    "poll_interval_seconds": 0.2,
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(pg_server_url: str) -> AsyncIterator[NotifyEnv]:
    async with notify_env(pg_server_url) as e:
        yield e


async def enqueue_many(env: NotifyEnv, n: int) -> list[str]:
    prefix = uuid.uuid4().hex[:8]
    keys = [f"proc/{prefix}/{i}" for i in range(n)]
    async with env.pool.acquire() as conn, conn.transaction():
        await outbox.enqueue_many(conn, [outbox.Message(k, "event_cancelled", [f"u-{prefix}"], params()) for k in keys])
    return keys


async def delivered_but_not_marked(env: NotifyEnv, keys: list[str]) -> int:
    """Messages the service has accepted whose row does not say SENT yet (a batch in the middle)."""
    got = [k for k in keys if k in env.inbox.by_key]
    return int(
        await env.pool.fetchval(
            "SELECT count(*) FROM notify.outbox WHERE dedupe_key = ANY($1::text[]) AND state <> 'SENT'", got
        )
    )


async def wait_mid_batch(env: NotifyEnv, keys: list[str], proc: subprocess.Popen[bytes], log: Path) -> None:
    async with asyncio.timeout(20):
        while True:
            assert proc.poll() is None, f"the worker died: see {log}"
            started = len(env.inbox.find(key_prefix=keys[0].rsplit("/", 1)[0])) >= 40
            if started and await delivered_but_not_marked(env, keys):
                return
            await asyncio.sleep(0.005)


async def kill_mid_batch(env: NotifyEnv, keys: list[str], tmp_path: Path, **settings: object) -> int:
    """Start a worker process, SIGKILL it while messages the service accepted are not marked SENT; returns how many
    were in doubt (a kill that lands between two batches proves nothing: it tries again)."""
    for attempt in range(3):
        log = tmp_path / f"worker-{attempt}.log"
        proc = env.spawn_worker(log, **{**SLOW, **settings})
        try:
            await wait_mid_batch(env, keys, proc, log)
        finally:
            signal_worker(proc, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
        assert proc.returncode == -signal.SIGKILL
        in_doubt = await delivered_but_not_marked(env, keys)
        if in_doubt:
            return in_doubt
    raise AssertionError("never killed in the middle of a batch")


PRODUCTION_LEASE = float(WorkerSettings.model_fields["lease_seconds"].default)
RECOVERY_BOUND = 15.0  # seconds from the kill until every message is sent; a dead worker's claims used to wait 60 s


async def test_a_killed_workers_claims_are_taken_over_after_one_short_lease_and_sent_once(
    env: NotifyEnv, tmp_path: Path
):
    env.standin.delay_seconds = 0.03
    repeats_before = env.inbox.duplicates
    try:
        keys = await enqueue_many(env, N)
        # The production lease and heartbeat: no test shortcut.
        in_doubt = await kill_mid_batch(env, keys, tmp_path, lease_seconds=PRODUCTION_LEASE)
        killed_at = time.monotonic()
        env.standin.delay_seconds = 0.0
        async with env.worker(lease_seconds=PRODUCTION_LEASE):
            await wait_all_sent(env.pool, within=PRODUCTION_LEASE + 10)
        recovery = time.monotonic() - killed_at
    finally:
        env.standin.delay_seconds = 0.0
    print(f"\nkill -9 mid-batch: {in_doubt} in doubt, all sent {recovery:.1f} s after the kill")
    assert recovery < RECOVERY_BOUND
    assert all(k in env.inbox.by_key for k in keys)  # nothing lost
    assert env.inbox.duplicates - repeats_before >= in_doubt  # the in-doubt ones were re-sent under their key...
    assert_each_key_once(env.inbox)  # ...and the service delivered none of them twice


async def test_a_live_worker_keeps_its_claims_through_a_batch_longer_than_its_lease(env: NotifyEnv, tmp_path: Path):
    # Each send takes 0.5 s, two at a time, 12 per batch: a batch lasts ~3 s, the lease is 2 s. Without the heartbeat
    # the second worker would take over rows still in the first one's hands and send them again.
    short = {"batch_size": 12, "send_concurrency": 2, "lease_seconds": 2.0, "notification_timeout_seconds": 1.5}
    env.standin.delay_seconds = 0.5
    repeats_before = env.inbox.duplicates
    log = tmp_path / "worker.log"
    try:
        keys = await enqueue_many(env, 36)
        proc = env.spawn_worker(log, poll_interval_seconds=0.2, **short)
        try:
            async with env.worker(**short):
                await wait_all_sent(env.pool, within=30)
            assert proc.poll() is None, log.read_text()
        finally:
            signal_worker(proc, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
    finally:
        env.standin.delay_seconds = 0.0
    assert all(k in env.inbox.by_key for k in keys)
    assert env.inbox.duplicates == repeats_before  # no row was ever sent by two workers
    assert_each_key_once(env.inbox)


async def test_sigterm_finishes_the_batch_in_hand_then_exits_cleanly(env: NotifyEnv, tmp_path: Path):
    env.standin.delay_seconds = 0.03
    log = tmp_path / "worker.log"
    try:
        keys = await enqueue_many(env, N)
        proc = env.spawn_worker(log, **SLOW)
        try:
            await wait_mid_batch(env, keys, proc, log)
            signal_worker(proc, signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 10)
        finally:
            signal_worker(proc, signal.SIGKILL)
        assert code == 0, log.read_text()
        # Nothing in doubt: every message the service got is marked SENT, no row is still leased.
        assert await delivered_but_not_marked(env, keys) == 0
        leased = await env.pool.fetchval(
            "SELECT count(*) FROM notify.outbox WHERE dedupe_key = ANY($1::text[]) "
            "AND state = 'PENDING' AND next_attempt_time > now()",
            keys,
        )
        assert leased == 0
        assert 0 < len([k for k in keys if k in env.inbox.by_key]) < N  # it stopped early, and cleanly
        assert "worker stopped" in log.read_text()
        async with env.worker():
            await wait_all_sent(env.pool, within=15)
    finally:
        env.standin.delay_seconds = 0.0
    assert_each_key_once(env.inbox)


async def test_the_worker_process_reveals_reviews_whose_window_closed_and_mails_their_subject(
    env: NotifyEnv, tmp_path: Path
):
    """The review domain's reveal job runs in the real worker: a review whose window closed is revealed, counted
    and its subject mailed (through the outbox, rendered by the stand-in), once."""
    host, guest = f"it-{uuid.uuid4().hex[:10]}", f"it-{uuid.uuid4().hex[:10]}"
    event_id, long_ago = uuid.uuid4(), datetime.now(UTC) - timedelta(days=30)
    async with env.pool.acquire() as conn, conn.transaction():
        for uid, name in ((host, "Hana"), (guest, "Gus")):
            await conn.execute("INSERT INTO account.users (id, display_name) VALUES ($1, $2)", uid, name)
        await conn.execute(
            """
            INSERT INTO event.events (id, host_id, film_id, film_title, title, start_time, end_time, time_zone,
                place_name, place_address, place_city, capacity, visibility, state, invite_token, complete_time)
            VALUES ($1, $2, 'f', 'Film', 'Old night', $3::timestamptz, $3::timestamptz + interval '2 hours', 'UTC',
                'p', 'a', 'c', 5, 'PUBLIC', 'COMPLETED', '0123456789abcdef', $3::timestamptz + interval '3 hours')
            """,
            event_id,
            host,
            long_ago,
        )
        review = await reviews.insert(
            conn,
            reviews.NewReview(
                uuid.uuid4(), event_id, guest, SubjectType.HOST, host, 4, "", long_ago, long_ago + timedelta(days=14)
            ),
        )
    assert review is not None and review.reveal_time is None
    log = tmp_path / "worker.log"
    proc = env.spawn_worker(log, jobs_interval_seconds=0.2)
    try:
        deadline = time.monotonic() + 20
        while f"review-revealed/{review.id}" not in env.inbox.by_key:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            await asyncio.sleep(0.1)
    finally:
        signal_worker(proc, signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 10)
    delivery = env.inbox.by_key[f"review-revealed/{review.id}"]
    assert (delivery.template_id, delivery.recipients) == ("review_revealed", (f"users/{host}",))
    assert await env.pool.fetchval("SELECT reveal_time IS NOT NULL FROM review.reviews WHERE id = $1", review.id)
    counted = await env.pool.fetchval(
        "SELECT rating_count FROM review.user_ratings WHERE user_id = $1 AND role = 'HOST'", host
    )
    assert counted == 1
