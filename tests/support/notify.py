"""Notification tests: a private database with real EventService/BookingService servers, the notification stand-in
over real gRPC, and workers with short intervals.

Each test module gets its own database (:func:`notify_env`), so its workers can move their clock far ahead and
relay every row without touching what other tests hold in the session database.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.booking.app import BookingApp, BookingSettings
from services.common.auth import TokenVerifier
from services.common.clock import ManualClock
from services.common.server import RunningServer, start_server
from services.dev.migrate import drop_database
from services.event.app import EventApp, EventSettings
from services.notification.client import NotificationClient
from services.notification.metrics import WorkerMetrics
from services.notification.settings import WorkerSettings
from services.notification.standin import Inbox, StandIn
from services.notification.worker import Worker
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER
from tests.support.db import create_migrated_database

REPO_ROOT = Path(__file__).resolve().parents[2]
PUBLIC_BASE_URL = "https://cowatch.test"

# Short intervals keep the suite fast; production defaults are in WorkerSettings.
FAST_WORKER: dict[str, Any] = {
    "poll_interval_seconds": 0.2,
    "backoff_base_seconds": 0.02,
    "backoff_cap_seconds": 0.2,
    "lease_seconds": 5.0,
    "max_attempts": 5,
    "batch_size": 50,
    "notification_timeout_seconds": 0.8,
    "public_base_url": PUBLIC_BASE_URL,
    "log_json": True,
}


@dataclass
class NotifyEnv:
    server_url: str
    db_name: str
    database_url: str
    pool: asyncpg.Pool
    clock: ManualClock
    standin: StandIn
    events: event_grpc.EventServiceAsyncStub
    bookings: booking_grpc.BookingServiceAsyncStub
    servers: list[RunningServer] = field(default_factory=list)

    @property
    def inbox(self) -> Inbox:
        return self.standin.inbox

    def standin_client(self) -> NotificationClient:
        """A client of this env's stand-in (close it with ``await client.close()``)."""
        return NotificationClient(self.standin.address, timeout_seconds=2.0)

    def worker_settings(self, **overrides: Any) -> WorkerSettings:
        values = {
            "database_url": self.database_url,
            "notification_address": self.standin.address,
            **FAST_WORKER,
            **overrides,
        }
        return WorkerSettings(**values)

    @asynccontextmanager
    async def worker(self, **overrides: Any) -> AsyncIterator[Worker]:
        """A started, running worker (this env's clock and stand-in); stopped and closed on exit."""
        worker = Worker(self.worker_settings(**overrides), clock=self.clock, metrics=WorkerMetrics())
        await worker.start()
        task = asyncio.create_task(worker.run())
        try:
            await worker.wait_listening()
            yield worker
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
            await worker.close()

    def worker_env(self, **overrides: Any) -> dict[str, str]:
        """Environment for ``python -m services.notification.worker`` against this env."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("COWATCH_")}
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "notification_address": self.standin.address,
            **FAST_WORKER,
            **overrides,
        }
        for key, value in values.items():
            env[f"COWATCH_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen")])
        return env

    def spawn_worker(self, log: Path, **overrides: Any) -> subprocess.Popen[bytes]:
        """``python -m services.notification.worker`` as a child process, its output going to ``log``."""
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "services.notification.worker"],
                cwd=REPO_ROOT,
                env=self.worker_env(**overrides),
                stdout=out,
                stderr=subprocess.STDOUT,
            )


def service_settings(cls: type[Any], database_url: str) -> Any:
    return cls(
        database_url=database_url,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_hs256_secret=HS256_SECRET,
        public_base_url=PUBLIC_BASE_URL,
        db_pool_min_size=0,
        db_pool_max_size=20,
        grpc_host="127.0.0.1",
    )


@asynccontextmanager
async def notify_env(server_url: str, *, start: datetime | None = None) -> AsyncIterator[NotifyEnv]:
    """A private migrated database, EventService + BookingService on it, a running stand-in; all torn down."""
    name, url = await create_migrated_database(server_url)
    clock = ManualClock(start or datetime.now(UTC))
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, hs256_secret=HS256_SECRET)
    standin = StandIn(log_messages=False)
    servers: list[RunningServer] = []
    pool = await asyncpg.create_pool(url, min_size=1, max_size=10)
    try:
        await standin.start(0)
        settings = service_settings(EventSettings, url)
        servers.append(await start_server(EventApp(settings, clock), settings, verifier=verifier, port=0))
        settings = service_settings(BookingSettings, url)
        servers.append(await start_server(BookingApp(settings, clock), settings, verifier=verifier, port=0))
        channels = [asyncio_channel(s.port) for s in servers]
        try:
            yield NotifyEnv(
                server_url=server_url,
                db_name=name,
                database_url=url,
                pool=pool,
                clock=clock,
                standin=standin,
                events=event_grpc.EventServiceStub(channels[0]),
                bookings=booking_grpc.BookingServiceStub(channels[1]),
                servers=servers,
            )
        finally:
            for channel in channels:
                await channel.close()
    finally:
        for server in servers:
            await server.stop(0.5)
        await standin.stop(0)
        await pool.close()
        await drop_database(server_url, name)


def asyncio_channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}")


# --------------------------------------------------------------------------------------------- messages


def params(event: str = "events/x") -> dict[str, Any]:
    """Everything the catalogue requires of an event_cancelled message."""
    return {
        "event": event,
        "event_title": "Solaris night",
        "film_title": "Solaris",
        "start_local": "Fri 4 Dec 2026, 20:00 CET (Europe/Berlin)",
        "start_time": "2026-12-04T19:00:00+00:00",
        "time_zone": "Europe/Berlin",
        "place_name": "Anna's",
        "place_city": "Berlin",
        "link": "https://cowatch.test/events/x",
        "reason": "",
    }


# --------------------------------------------------------------------------------------------- assertions


async def outbox_states(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT state, count(*) AS n FROM notify.outbox GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


async def outbox_row(pool: asyncpg.Pool, dedupe_key: str) -> Mapping[str, Any]:
    row = await pool.fetchrow("SELECT * FROM notify.outbox WHERE dedupe_key = $1", dedupe_key)
    assert row is not None, f"no outbox row {dedupe_key}"
    out = dict(row)
    out["params"] = json.loads(out["params"])
    return out


async def reminder_states(pool: asyncpg.Pool, event_name: str) -> dict[tuple[str, str], tuple[str, datetime]]:
    """{(kind, recipient): (state, due_time)} of one event's reminders."""
    rows = await pool.fetch(
        "SELECT kind, recipient_id, state, due_time FROM notify.reminders WHERE event_id = $1::uuid",
        event_name.split("/")[1],
    )
    return {(r["kind"], r["recipient_id"]): (r["state"], r["due_time"]) for r in rows}


async def wait_all_sent(pool: asyncpg.Pool, within: float = 10.0) -> None:
    """Until no outbox row is PENDING any more."""
    async with asyncio.timeout(within):
        while True:
            if not await pool.fetchval("SELECT count(*) FROM notify.outbox WHERE state = 'PENDING'"):
                return
            await asyncio.sleep(0.02)


def assert_each_key_once(inbox: Inbox) -> None:
    """No dedupe key was ever accepted as new twice (the stand-in remembers every key it accepted)."""
    repeated = {k: n for k, n in inbox.accepted_per_key.items() if n != 1}
    assert not repeated, f"delivered more than once: {repeated}"


def signal_worker(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal the worker process this test started (by its pid)."""
    if proc.poll() is None:
        proc.send_signal(sig)
