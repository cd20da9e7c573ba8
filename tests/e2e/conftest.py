"""End-to-end fixtures: the services as real processes (two EventService replicas) behind a real Envoy."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER
from tests.support.envoy import EnvoyProcess, ServiceProcess

EVENT_SERVICE = "cowatch.event.v1.EventService"


@dataclass
class Gateway:
    envoy: EnvoyProcess
    event_replicas: list[ServiceProcess]
    booking: ServiceProcess
    review: ServiceProcess

    @property
    def url(self) -> str:
        return self.envoy.url

    def diagnostics(self) -> str:
        parts = [f"--- {p.name} ---\n{p.log_tail(15)}" for p in (*self.event_replicas, self.booking, self.review)]
        parts.append(f"--- envoy ---\n{self.envoy.log_tail(30)}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def gateway(database_url: str) -> Iterator[Gateway]:
    """Two EventService replicas, BookingService and ReviewService as processes over the session database, and
    Envoy in front of them, once every cluster is healthy in Envoy's eyes."""
    env = {
        "COWATCH_DATABASE_URL": database_url,
        "COWATCH_JWT_ISSUER": ISSUER,
        "COWATCH_JWT_AUDIENCE": AUDIENCE,
        "COWATCH_JWT_HS256_SECRET": HS256_SECRET,
        "COWATCH_PUBLIC_BASE_URL": "https://cowatch.test",
        "COWATCH_SHUTDOWN_GRACE_SECONDS": "1",
        "COWATCH_DB_POOL_MAX_SIZE": "5",
    }
    with tempfile.TemporaryDirectory(prefix="cowatch-e2e-") as tmp:
        workdir = Path(tmp)
        events = [ServiceProcess(f"event-{i}", "services.event", EVENT_SERVICE, env, workdir) for i in (1, 2)]
        booking = ServiceProcess("booking", "services.booking", "cowatch.booking.v1.BookingService", env, workdir)
        review = ServiceProcess("review", "services.review", "cowatch.review.v1.ReviewService", env, workdir)
        services = [*events, booking, review]
        envoy = EnvoyProcess(
            {
                "event": [e.address for e in events],
                "booking": [booking.address],
                "review": [review.address],
            },
            workdir,
        )
        try:
            for service in services:  # all at once: each takes ~1 s to import and connect
                service.start()
            envoy.start()
            for service in services:
                service.wait_serving()
            envoy.wait_healthy({"event": 2, "booking": 1, "review": 1})
            yield Gateway(envoy, events, booking, review)
        finally:
            for service in services:
                service.stop(5)
            envoy.stop(5)
