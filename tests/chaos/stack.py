"""The multi-process stack the chaos scenarios break: every piece a real process of its own, on free ports.

* PostgreSQL: an embedded server driven from a helper process (:class:`~tests.support.pg_process.RemotePostgres`,
  so it can be stopped and started while gRPC threads are busy here), one migrated database;
* Redis: a private ``redis-server`` (:class:`~tests.support.redis_server.RedisServer`);
* EventService, two BookingService replicas, ReviewService: ``python -m services.<name>``;
* the notification worker (``python -m services.notification.worker``) and the notification stand-in
  (``python -m services.notification.standin --record FILE``: one JSON line per call it accepted, across restarts);
* Envoy in front of the services (the repository's ``envoy/envoy.yaml``, rendered for these ports).

Nothing here is shared with other tests or developers: faults only ever hit these processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg

from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER
from tests.support.db import create_migrated_database
from tests.support.envoy import EnvoyProcess, ServiceProcess, _Process
from tests.support.pg_process import RemotePostgres
from tests.support.redis_server import RedisServer

BOOKING_SERVICE: Final = "cowatch.booking.v1.BookingService"
EVENT_SERVICE: Final = "cowatch.event.v1.EventService"
REVIEW_SERVICE: Final = "cowatch.review.v1.ReviewService"
BOOKING_REPLICAS: Final = 2

# The worker runs with its production settings except the lease: a row claimed by a killed worker is re-sent
# after it, and 60 s would make every worker-kill row wait a minute. Said in the table.
WORKER_LEASE_SECONDS: Final = 10.0


class WorkerProcess(_Process):
    """``python -m services.notification.worker`` (no port of its own)."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = "worker"
        self.env = dict(env)
        self.log_path = log_dir / "worker.log"

    def start(self) -> WorkerProcess:
        self._spawn([sys.executable, "-m", "services.notification.worker"], self.env)
        return self


class StandinProcess(ServiceProcess):
    """The notification stand-in on a fixed free port, recording what it accepts in ``record_path``."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        super().__init__("notification", "services.notification.standin", "", env, log_dir)
        self.record_path = log_dir / "notification-record.jsonl"
        self.env["COWATCH_STANDIN_PORT"] = str(self.port)
        self.env["COWATCH_STANDIN_RECORD"] = str(self.record_path)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def deliveries(self) -> Counter[str]:
        """Dedupe key → how many times the stand-in accepted it as a new message (``duplicate`` false), over every
        life of the process. A repeat the stand-in recognised (``duplicate`` true) was not delivered again."""
        counts: Counter[str] = Counter()
        if not self.record_path.exists():
            return counts
        for line in self.record_path.read_text(encoding="utf-8").splitlines():
            try:
                call = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if not call.get("duplicate"):
                counts[call["key"]] += 1
        return counts


@dataclass
class ChaosStack:
    workdir: Path
    pg: RemotePostgres
    database_url: str
    redis: RedisServer
    event: ServiceProcess
    bookings: list[ServiceProcess]
    review: ServiceProcess
    worker: WorkerProcess
    standin: StandinProcess
    envoy: EnvoyProcess
    pool: asyncpg.Pool | None = None

    @property
    def services(self) -> list[ServiceProcess]:
        return [self.event, *self.bookings, self.review]

    @classmethod
    async def start(cls, workdir: Path) -> ChaosStack:
        pg = await asyncio.to_thread(RemotePostgres)
        try:
            _, database_url = await create_migrated_database(pg.url, "cowatch_chaos")
            redis = RedisServer().start()
        except BaseException:
            pg.close()
            raise
        base = {k: v for k, v in os.environ.items() if not k.startswith("COWATCH_")}
        common = {
            **base,
            "COWATCH_DATABASE_URL": database_url,
            "COWATCH_LOG_LEVEL": "WARNING",
        }
        service_env = {
            **common,
            "COWATCH_REDIS_URL": redis.url,
            "COWATCH_JWT_ISSUER": ISSUER,
            "COWATCH_JWT_AUDIENCE": AUDIENCE,
            "COWATCH_JWT_HS256_SECRET": HS256_SECRET,
            "COWATCH_PUBLIC_BASE_URL": "https://cowatch.test",
            "COWATCH_DB_POOL_MAX_SIZE": "8",
        }
        standin = StandinProcess(common, workdir)
        worker = WorkerProcess(
            {
                **common,
                "COWATCH_NOTIFICATION_ADDRESS": standin.target,
                "COWATCH_LEASE_SECONDS": str(WORKER_LEASE_SECONDS),
                "PYTHONUNBUFFERED": "1",
            },
            workdir,
        )
        event = ServiceProcess("event", "services.event", EVENT_SERVICE, service_env, workdir)
        bookings = [
            ServiceProcess(f"booking-{i}", "services.booking", BOOKING_SERVICE, service_env, workdir)
            for i in range(1, BOOKING_REPLICAS + 1)
        ]
        review = ServiceProcess("review", "services.review", REVIEW_SERVICE, service_env, workdir)
        envoy = EnvoyProcess(
            {"event": [event.address], "booking": [b.address for b in bookings], "review": [review.address]},
            workdir,
        )
        stack = cls(workdir, pg, database_url, redis, event, bookings, review, worker, standin, envoy)
        try:
            for process in (standin, *stack.services):
                process.start()
            envoy.start()
            await asyncio.to_thread(standin.wait_serving)
            for service in stack.services:
                await asyncio.to_thread(service.wait_serving, 60)
            worker.start()
            await asyncio.to_thread(envoy.wait_healthy, {"event": 1, "booking": BOOKING_REPLICAS, "review": 1}, 30)
            stack.pool = await asyncpg.create_pool(database_url, min_size=0, max_size=4)  # no reconnect noise
        except BaseException:
            await stack.close()
            raise
        return stack

    async def restart_booking(self, replica: ServiceProcess) -> None:
        """Start a dead replica again on its port and wait until Envoy routes to it."""
        await asyncio.to_thread(replica.stop, 30)
        replica.start()
        await asyncio.to_thread(replica.wait_serving, 60)
        await asyncio.to_thread(self.envoy.wait_healthy, {"booking": BOOKING_REPLICAS}, 30)

    def check_running(self) -> None:
        for process in (*self.services, self.worker, self.standin, self.envoy):
            process.check_running()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        for process in (self.worker, *self.services, self.standin, self.envoy):
            await asyncio.to_thread(process.stop, 10)
        self.redis.close()
        await asyncio.to_thread(self.pg.close)
