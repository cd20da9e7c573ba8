"""Settings of the notification processes: the outbox/reminder worker and the local stand-in.

Why not :class:`services.common.settings.CommonSettings`? That class describes a *gRPC server that
authenticates callers*: it requires ``COWATCH_JWT_ISSUER`` / ``COWATCH_JWT_AUDIENCE`` (and an HS256 secret by
default). The worker serves no RPCs and verifies no tokens, so demanding those variables would make operators
configure secrets a process never uses (and leak them into one more place). The worker therefore has its own,
smaller class with the same conventions: prefix ``COWATCH_``, ``DATABASE_URL`` also accepted, same pool knobs
and names, frozen, fail fast with one line per bad variable (:func:`load`, the same output as
``services.common.settings.load_settings``, whose type bound is ``CommonSettings``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import ENV_PREFIX, RedisSettings

__all__ = ["StandinSettings", "WorkerSettings"]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

_CONFIG = SettingsConfigDict(
    env_prefix=ENV_PREFIX,
    case_sensitive=False,
    env_ignore_empty=True,
    extra="ignore",
    validate_by_name=True,
    validate_by_alias=True,
    frozen=True,
)

T = TypeVar("T", bound="_ProcessSettings")


class _ProcessSettings(BaseSettings):
    model_config = _CONFIG
    service_name: ClassVar[str] = "cowatch"

    log_level: LogLevel = "INFO"
    log_json: bool = True

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


class WorkerSettings(_ProcessSettings, RedisSettings):
    """``python -m services.notification.worker``: relays ``notify.outbox`` and dispatches due reminders."""

    service_name: ClassVar[str] = "cowatch-notification-worker"

    # --- storage (same names and meaning as CommonSettings) ----------------------------------------------
    database_url: str = Field(
        validation_alias=AliasChoices("COWATCH_DATABASE_URL", "DATABASE_URL"),
        repr=False,
        description="PostgreSQL DSN, postgresql://user:pass@host:port/db",
    )
    database_direct_url: str | None = Field(
        default=None,
        repr=False,
        description="PostgreSQL DSN of the LISTEN connection (a session of its own); default COWATCH_DATABASE_URL. "
        "Set it to PostgreSQL itself when COWATCH_DATABASE_URL points at PgBouncer in transaction pooling",
    )
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(
        default=4, ge=2, description="claims, lease renewals, marks, reminders, retention and metrics"
    )
    db_command_timeout_seconds: float = Field(default=5.0, gt=0)
    db_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    db_acquire_timeout_seconds: float = Field(default=2.0, gt=0)
    db_statement_cache_size: int = Field(
        default=100, ge=0, description="as for the servers: 0 behind PgBouncer < 1.21 in transaction pooling"
    )

    # --- the notification service ------------------------------------------------------------------------
    notification_address: str = Field(
        min_length=1, description="host:port of the notification service (the stand-in under make run)"
    )
    notification_tls: bool = Field(default=False, description="TLS to the notification service")
    notification_timeout_seconds: float = Field(default=5.0, gt=0, description="deadline of one Send call")
    notification_retry_attempts: int = Field(
        default=3, ge=1, le=5, description="tries of one Send on UNAVAILABLE (gRPC retry policy), within the deadline"
    )

    # --- relay -------------------------------------------------------------------------------------------
    batch_size: int = Field(default=100, ge=1, le=1000, description="outbox rows claimed at once")
    send_concurrency: int = Field(default=64, ge=1, le=1000, description="Send calls in flight per worker")
    max_attempts: int = Field(default=10, ge=1, description="tries before a message is dead-lettered")
    backoff_base_seconds: float = Field(default=1.0, gt=0, description="delay after the first failure")
    backoff_cap_seconds: float = Field(default=300.0, gt=0, description="longest delay between tries")
    outage_probe_max_seconds: float = Field(
        default=15.0, gt=0, description="longest pause between probes while the notification service is down"
    )
    lease_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a claimed row is re-sent by anyone after this long without a heartbeat from its claimer",
    )
    lease_heartbeat_seconds: float | None = Field(
        default=None, gt=0, description="how often a live worker renews its claims; default a third of the lease"
    )
    poll_interval_seconds: float = Field(
        default=5.0, gt=0, description="fallback poll when no NOTIFY arrives (and the reminder scan interval)"
    )

    # --- reminders ---------------------------------------------------------------------------------------
    reminder_batch_size: int = Field(default=200, ge=1, le=5000)
    public_base_url: str = "http://localhost:8080"

    # --- retention (services/notification/retention.py) ---------------------------------------------------
    retention_interval_seconds: float = Field(default=600.0, gt=0, description="how often old rows are deleted")
    retention_batch_size: int = Field(default=500, ge=1, le=10_000, description="rows deleted per statement")
    outbox_sent_retention_seconds: float = Field(
        default=7 * 86_400.0, ge=60, description="sent outbox rows (with their addresses) are kept this long"
    )
    outbox_dead_retention_seconds: float = Field(
        default=30 * 86_400.0, ge=60, description="dead-lettered outbox rows are kept this long after they were written"
    )
    idempotency_retention_seconds: float = Field(
        default=7 * 86_400.0,
        ge=3_600,
        description="request ids (idem.requests) are kept this long: longer than any client may retry a write",
    )

    # --- other domains' periodic jobs (the review reveal) ------------------------------------------------
    jobs_interval_seconds: float = Field(
        default=60.0, gt=0, description="how often reviews whose window has closed are revealed"
    )

    # --- process -----------------------------------------------------------------------------------------
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus /metrics port; 0 = no endpoint")
    metrics_host: str = "0.0.0.0"
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, description="time to finish the current batch")

    @field_validator("database_url", "database_direct_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise PydanticCustomError("dsn", "must start with postgresql:// or postgres://")
        return value

    @property
    def listen_url(self) -> str:
        """Where the LISTEN connection goes: the direct URL when set, else the pool's."""
        return self.database_direct_url or self.database_url

    @field_validator("public_base_url")
    @classmethod
    def _check_public_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise PydanticCustomError("url", "must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("notification_address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        value = value.strip()
        if "://" in value:
            raise PydanticCustomError("address", "must be host:port (no scheme), e.g. notification:50060")
        return value

    @field_validator("lease_heartbeat_seconds")
    @classmethod
    def _check_heartbeat(cls, value: float | None, info: ValidationInfo) -> float | None:
        lease = info.data.get("lease_seconds")
        if value is not None and isinstance(lease, float | int) and value * 2 > lease:
            raise PydanticCustomError(
                "heartbeat",
                "must be at most half of COWATCH_LEASE_SECONDS ({lease}): a late beat must not lose the claim",
                {"lease": lease},
            )
        return value

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_heartbeat_seconds or self.lease_seconds / 3

    @field_validator("db_pool_max_size")
    @classmethod
    def _check_pool_bounds(cls, value: int, info: ValidationInfo) -> int:
        min_size = info.data.get("db_pool_min_size")
        if isinstance(min_size, int) and min_size > value:
            raise PydanticCustomError(
                "pool", "must not be below COWATCH_DB_POOL_MIN_SIZE ({min_size})", {"min_size": min_size}
            )
        return value

    @field_validator("backoff_cap_seconds")
    @classmethod
    def _check_backoff(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("backoff_base_seconds")
        if isinstance(base, float | int) and base > value:
            raise PydanticCustomError(
                "backoff", "must not be below COWATCH_BACKOFF_BASE_SECONDS ({base})", {"base": base}
            )
        return value


class StandinSettings(_ProcessSettings):
    """``python -m services.notification.standin``: the local stand-in of the notification service."""

    service_name: ClassVar[str] = "cowatch-notification-standin"

    standin_host: str = "127.0.0.1"
    standin_port: int = Field(default=50060, ge=0, le=65535)
    standin_record: Path | None = Field(default=None, description="append a JSON line per accepted call here")
    log_json: bool = False  # it is there to be read by a developer
