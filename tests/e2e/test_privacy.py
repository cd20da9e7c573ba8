"""Logs and storage keep no secrets: an end-to-end run through NGINX → Envoy → the three services, with the worker
and the notification stand-in, all real processes whose output is captured.

The run: a host creates a private event (a street address), shares it; a guest opens the share link and books
with the invite token (once more as an idempotent retry); the host invites two more users and edits the event
(a new address); a stranger tries a wrong token; a client hammering the share link is rate-limited by NGINX. Then:

* no log line of the services, the worker, Envoy or either NGINX holds an invite token, a bearer token (or its
  signature), an email address (a claim of every token) or a street address. (The stand-in is left out: it stands
  for the mail service, and prints the mails' links for the developer under ``make run``.)
* after the retention period (time moved past it, the worker's retention job with its default settings), no
  outbox row holds an address or an invite link, and no request id is kept.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from services.common.auth import issue_token
from services.common.clock import ManualClock, SystemClock
from services.dev.migrate import drop_database
from services.notification.metrics import WorkerMetrics
from services.notification.retention import Retention, RetentionConfig
from services.notification.settings import WorkerSettings
from tests.e2e.test_gateway_envoy import event_json, http, post_json
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER, Caller
from tests.support.db import create_migrated_database
from tests.support.envoy import EnvoyProcess, ServiceProcess
from tests.support.factories import known_users
from tests.support.nginx import NginxProcess, nginx_binary

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVICES = {
    "event": ("services.event", "cowatch.event.v1.EventService"),
    "booking": ("services.booking", "cowatch.booking.v1.BookingService"),
    "review": ("services.review", "cowatch.review.v1.ReviewService"),
}
GENEROUS = {"COWATCH_NGINX_RATE": "10000r/s", "COWATCH_NGINX_BURST": "10000"}
LIMITED = {"COWATCH_NGINX_RATE": "1r/m", "COWATCH_NGINX_BURST": "1"}


@dataclass
class Stack:
    database_url: str
    pool: asyncpg.Pool
    workdir: Path
    services: dict[str, ServiceProcess]
    worker: ServiceProcess
    standin: ServiceProcess
    envoy: EnvoyProcess
    nginx: NginxProcess
    limited: NginxProcess

    def stop(self) -> None:
        for p in (*self.services.values(), self.worker, self.standin, self.nginx, self.limited, self.envoy):
            p.stop(10)

    def logs(self) -> dict[str, str]:
        """Every captured log but the stand-in's, by process."""
        procs = [*self.services.values(), self.worker, self.envoy, self.nginx, self.limited]
        return {p.name: p.log_path.read_text(errors="replace") for p in procs}


def caller(name: str) -> tuple[Caller, str]:
    """A user whose token carries an email claim; returns (caller, email)."""
    uid = f"u-{uuid.uuid4().hex[:12]}"
    email = f"{uid}@privacy.example"
    token = issue_token(
        subject=uid, issuer=ISSUER, audience=AUDIENCE, key=HS256_SECRET, name=name, extra_claims={"email": email}
    )
    return Caller(uid, name, token), email


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(pg_server_url: str) -> AsyncIterator[Stack]:
    nginx_binary()  # fails with "nginx is not installed ..." before anything starts

    name, url = await create_migrated_database(pg_server_url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    common = {
        "COWATCH_DATABASE_URL": url,
        "COWATCH_PUBLIC_BASE_URL": "https://cowatch.test",
        "COWATCH_SHUTDOWN_GRACE_SECONDS": "1",
        "COWATCH_DB_POOL_MIN_SIZE": "1",
        "COWATCH_DB_POOL_MAX_SIZE": "3",
        "COWATCH_LOG_JSON": "true",
    }
    auth = {"COWATCH_JWT_ISSUER": ISSUER, "COWATCH_JWT_AUDIENCE": AUDIENCE, "COWATCH_JWT_HS256_SECRET": HS256_SECRET}
    with tempfile.TemporaryDirectory(prefix="cowatch-e2e-privacy-") as tmp:
        workdir = Path(tmp)
        services = {
            name: ServiceProcess(name, module, health, {**common, **auth}, workdir)
            for name, (module, health) in SERVICES.items()
        }
        standin = ServiceProcess("standin", "services.notification.standin", "", common, workdir)
        standin.env["COWATCH_STANDIN_PORT"] = str(standin.port)
        worker = ServiceProcess(
            "worker",
            "services.notification.worker",
            "",
            {
                **common,
                "COWATCH_NOTIFICATION_ADDRESS": f"127.0.0.1:{standin.port}",
                "COWATCH_POLL_INTERVAL_SECONDS": "0.2",
            },
            workdir,
        )
        envoy = EnvoyProcess({name: [p.address] for name, p in services.items()}, workdir)
        (workdir / "main").mkdir()
        (workdir / "limited").mkdir()
        nginx = NginxProcess(("127.0.0.1", envoy.port), workdir / "main", GENEROUS)
        limited = NginxProcess(("127.0.0.1", envoy.port), workdir / "limited", LIMITED)
        stack = Stack(url, pool, workdir, services, worker, standin, envoy, nginx, limited)
        try:
            for p in (*services.values(), standin):
                p.start()
            envoy.start()
            nginx.start()
            limited.start()
            for p in (*services.values(), standin):
                p.wait_serving()
            worker.start()
            envoy.wait_healthy(dict.fromkeys(SERVICES, 1))
            yield stack
        finally:
            stack.stop()
            await pool.close()
            await drop_database(pg_server_url, name)


async def call(method: str, url: str, payload: object | None = None, who: Caller | None = None) -> tuple[int, Any]:
    """One JSON request (in a thread: urllib blocks); (status, decoded body)."""
    if method == "POST" or method == "PATCH":
        if method == "POST":
            status, _, body = await asyncio.to_thread(post_json, url, payload, who)
        else:
            headers = {"content-type": "application/json", "authorization": f"Bearer {who.token}"} if who else {}
            status, _, body = await asyncio.to_thread(http, method, url, json.dumps(payload).encode(), headers)
    else:
        headers = {"authorization": f"Bearer {who.token}"} if who else {}
        status, _, body = await asyncio.to_thread(http, method, url, None, headers)
    return status, json.loads(body) if body.startswith(b"{") else body


async def wait_outbox_sent(pool: asyncpg.Pool, within: float = 30.0) -> int:
    """Until every outbox row is SENT; returns how many there are."""
    deadline = time.monotonic() + within
    while True:
        rows = await pool.fetch("SELECT state, count(*) AS n FROM notify.outbox GROUP BY state")
        states: dict[str, int] = {r["state"]: r["n"] for r in rows}
        if states and set(states) == {"SENT"}:
            return states["SENT"]
        assert time.monotonic() < deadline, f"outbox not drained: {states}"
        await asyncio.sleep(0.1)


def secrets_in(logs: dict[str, str], secrets: dict[str, str]) -> Iterator[str]:
    for process, text in logs.items():
        for n, line in enumerate(text.splitlines(), 1):
            for what, secret in secrets.items():
                if secret in line:
                    yield f"{process}:{n}: {what} in {line[:300]}"


async def test_no_secret_in_any_log_and_retention_purges_what_storage_kept(stack: Stack) -> None:
    base = stack.nginx.url
    (host, host_email), (guest, guest_email), (invitee, invitee_email) = (
        caller("Hanna Host"),
        caller("Gus Guest"),
        caller("Ivo Invitee"),
    )
    stranger, stranger_email = caller("Stan Stranger")
    address = f"Geheimweg {uuid.uuid4().hex[:6]} 7"
    new_address = f"Verstecktstr. {uuid.uuid4().hex[:6]} 12"

    # The host creates a private event at their home address.
    body = event_json(f"PRIV-{uuid.uuid4().hex[:8]}", private=True)
    body["place"]["address"] = address
    status, event = await call("POST", f"{base}/v1/events", body, host)
    assert status == 200, event
    invite = event["inviteToken"]
    assert invite and invite in event["shareLink"]
    event_path = f"/v1/{event['name']}"

    # The guest opens the share link and books with the token; a retry with the same request id replays.
    status, seen = await call("GET", f"{base}{event_path}?inviteToken={invite}", who=guest)
    assert status == 200 and seen["addressHidden"], seen  # until booked
    booking_url = f"{base}/v1/bookings?inviteToken={invite}&requestId={uuid.uuid4()}"
    status, booking = await call("POST", booking_url, {"event": event["name"], "seats": 1}, guest)
    assert status == 200, booking
    status, again = await call("POST", booking_url, {"event": event["name"], "seats": 1}, guest)
    assert status == 200 and again["name"] == booking["name"]

    # The host invites people cowatch knows (the mail carries the share link) and moves the event to a new address.
    await known_users(stack.pool, invitee, stranger)
    invitation = {"users": [invitee.resource, stranger.resource], "message": "Come!", "requestId": str(uuid.uuid4())}
    status, sent = await call("POST", f"{base}{event_path}:sendInvitations", invitation, host)
    assert status == 200, sent
    place = {**event["place"], "address": new_address}
    status, moved = await call("PATCH", f"{base}{event_path}?updateMask=place", {"place": place}, host)
    assert status == 200 and moved["place"]["address"] == new_address, moved

    # A stranger guesses a token; a client hammering the share link meets NGINX's rate limit.
    wrong = f"{invite[:-4]}XXXX"
    status, _ = await call("GET", f"{base}{event_path}?inviteToken={wrong}", who=stranger)
    assert status == 404
    limited = [(await call("GET", f"{stack.limited.url}{event_path}?inviteToken={invite}", who=invitee))[0]]
    for _ in range(3):
        limited.append((await call("GET", f"{stack.limited.url}{event_path}?inviteToken={invite}", who=invitee))[0])
    assert 429 in limited, limited

    # Every mail went out: booking confirmation and new guest, invitations, the change.
    rows = await wait_outbox_sent(stack.pool)
    assert rows >= 4
    with_address = await stack.pool.fetchval(
        "SELECT count(*) FROM notify.outbox WHERE params::text LIKE '%' || $1 || '%'", new_address
    )
    with_invite = await stack.pool.fetchval(
        "SELECT count(*) FROM notify.outbox WHERE params::text LIKE '%' || $1 || '%'", invite
    )
    request_ids = await stack.pool.fetchval("SELECT count(*) FROM idem.requests")
    assert with_address > 0 and with_invite > 0 and request_ids > 0  # what retention must remove

    stack.stop()  # flush every log
    logs = stack.logs()
    # The logs are not empty: each process logged the run (so "no secret" means something).
    assert event_path in logs[stack.envoy.name] and event_path in logs[stack.nginx.name]
    assert '"status":429' in logs[stack.limited.name]
    assert "worker started" in logs[stack.worker.name]
    assert all(logs[name].strip() for name in SERVICES)
    secrets = {"invite token": invite, "guessed token": wrong, "street address": address}
    secrets["new street address"] = new_address
    for who, email in ((host, host_email), (guest, guest_email), (invitee, invitee_email), (stranger, stranger_email)):
        secrets[f"{who.name}'s token"] = who.token
        secrets[f"{who.name}'s token signature"] = who.token.rsplit(".", 1)[1]
        secrets[f"{who.name}'s email"] = email
    leaks = list(secrets_in(logs, secrets))
    assert not leaks, "\n".join(leaks)

    # Retention, a week and a day later, with the worker's default periods.
    defaults = WorkerSettings.model_fields
    config = RetentionConfig(
        outbox_sent=timedelta(seconds=defaults["outbox_sent_retention_seconds"].default),
        outbox_dead=timedelta(seconds=defaults["outbox_dead_retention_seconds"].default),
        request_ids=timedelta(seconds=defaults["idempotency_retention_seconds"].default),
        batch_size=2,
    )
    await Retention(stack.pool, SystemClock(), config, WorkerMetrics()).run_once()
    assert await stack.pool.fetchval("SELECT count(*) FROM notify.outbox") == rows  # nothing is old yet
    later = ManualClock(SystemClock().now() + timedelta(days=8))
    run = await Retention(stack.pool, later, config, WorkerMetrics()).run_once()
    assert run.outbox_sent == rows and run.request_ids == request_ids
    assert await stack.pool.fetchval("SELECT count(*) FROM notify.outbox") == 0
    assert await stack.pool.fetchval("SELECT count(*) FROM idem.requests") == 0
