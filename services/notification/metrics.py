"""Prometheus metrics of the notification worker (one registry per worker, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WorkerMetrics"]

LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.sent = Counter(
            "cowatch_outbox_sent",
            "Outbox messages accepted by the notification service (duplicate=true: it had them already).",
            ["template", "duplicate"],
            registry=r,
        )
        self.failed = Counter(
            "cowatch_outbox_failed",
            "Send attempts that failed (the message is retried later, or dead-lettered).",
            ["template", "code"],
            registry=r,
        )
        self.dead = Counter(
            "cowatch_outbox_dead",
            "Messages moved to the dead-letter state (DEAD) after their last try or a permanent error.",
            ["template"],
            registry=r,
        )
        self.lag = Histogram(
            "cowatch_outbox_lag_seconds",
            "From the outbox row's transaction to the notification service's acknowledgement.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.service_up = Gauge(
            "cowatch_notification_service_up",
            "1 while the notification service accepts messages, 0 during an outage (messages wait in the outbox).",
            registry=r,
        )
        self.service_up.set(1)
        self.pending = Gauge("cowatch_outbox_pending", "Outbox messages waiting to be sent.", registry=r)
        self.oldest_pending = Gauge(
            "cowatch_outbox_oldest_pending_age_seconds", "Age of the oldest pending outbox message.", registry=r
        )
        self.reminders = Counter(
            "cowatch_reminders",
            "Reminders dispatched (outcome=sent: queued in the outbox; skipped: too late or no longer relevant).",
            ["kind", "outcome"],
            registry=r,
        )
        self.purged = Counter(
            "cowatch_retention_deleted",
            "Rows deleted by the retention job (what: outbox_sent, outbox_dead, request_ids).",
            ["what"],
            registry=r,
        )

    def sent_count(self) -> float:
        """Total accepted messages (tests and the bench read it)."""
        return sum(s.value for m in self.sent.collect() for s in m.samples if s.name.endswith("_total"))

    def dead_count(self) -> float:
        return sum(s.value for m in self.dead.collect() for s in m.samples if s.name.endswith("_total"))
