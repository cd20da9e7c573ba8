"""Process configuration from environment variables (pydantic-settings, prefix ``COWATCH_``).

Each service subclasses :class:`CommonSettings` (and sets its own ``grpc_port`` default); ``load_settings``
turns validation errors into a one-line-per-variable message and exits with status 2, without a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "ENV_PREFIX",
    "CommonSettings",
    "JwtAlgorithm",
    "RedisSettings",
    "TracingSettings",
    "env_names",
    "format_validation_error",
    "load_settings",
]

ENV_PREFIX = "COWATCH_"
JwtAlgorithm = Literal["HS256", "RS256", "ES256"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
MIN_HS256_SECRET_BYTES = 32
Environment = Literal["production", "development"]
PUBLIC_HS256_SECRETS = frozenset(
    {
        "change-me-to-a-random-secret-of-at-least-32-bytes",  # the placeholder of .env.example
        "cowatch-dev-secret-for-make-run-only-never-in-production",  # services/dev/token.py (make run)
    }
)
"""HS256 secrets published in this repository: a production process refuses to start with one of them."""
_PROBLEM = "settings_problem"

S = TypeVar("S", bound=BaseSettings)


_MODEL_CONFIG = SettingsConfigDict(
    env_prefix=ENV_PREFIX,
    case_sensitive=False,
    env_ignore_empty=True,
    extra="ignore",
    validate_by_name=True,
    validate_by_alias=True,
    frozen=True,
)


class RedisSettings(BaseSettings):
    """The Redis cache's settings, shared by the servers (:class:`CommonSettings`) and the worker (whose periodic
    jobs invalidate what they change)."""

    model_config = _MODEL_CONFIG
    service_name: ClassVar[str] = "cowatch"
    """Used for the Postgres ``application_name``, Redis ``client_name`` and logs; subclasses set their own."""

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("COWATCH_REDIS_URL", "REDIS_URL"),
        repr=False,
        description="Redis URL (redis://, rediss:// or unix://); unset = no cache",
    )
    redis_key_prefix: str = Field(
        default="cowatch:",
        description="Prefix of every Redis key this process writes (lets several deployments share one Redis)",
    )
    redis_timeout_seconds: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description="Connect/command timeout of every Redis call; a request never waits longer on Redis",
    )
    redis_max_connections: int = Field(default=64, ge=1, description="Redis connections per process")
    redis_breaker_failure_threshold: int = Field(
        default=5, ge=1, description="Consecutive Redis failures that open the circuit breaker (reads bypass Redis)"
    )
    redis_breaker_reset_seconds: float = Field(
        default=2.0, gt=0, description="While the breaker is open, Redis is probed this often; success closes it"
    )

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise PydanticCustomError("url", "must start with redis://, rediss:// or unix://")
        return value


class CommonSettings(RedisSettings):
    """Settings every cowatch server process shares. Subclass per service and override ``grpc_port``."""

    model_config = _MODEL_CONFIG

    service_name: ClassVar[str] = "cowatch"
    """Used for the Postgres ``application_name`` and logs; subclasses set e.g. ``"cowatch-event"``."""

    # --- storage --------------------------------------------------------------------------------------------
    database_url: str = Field(
        validation_alias=AliasChoices("COWATCH_DATABASE_URL", "DATABASE_URL"),
        repr=False,  # carries the password
        description="PostgreSQL DSN, postgresql://user:pass@host:port/db",
    )
    waitlist_claim_window_seconds: int = Field(
        default=7200,
        ge=60,
        le=7 * 24 * 3600,
        description="How long seats offered to a waitlisted guest are held for them (never past the start)",
    )
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=10, ge=1)
    db_command_timeout_seconds: float = Field(default=5.0, gt=0)
    db_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    db_acquire_timeout_seconds: float = Field(default=2.0, gt=0)
    read_database_url: str | None = Field(
        default=None,
        repr=False,  # carries the password
        description="PostgreSQL DSN of a streaming replica for the lag-tolerant reads (README, Read replicas); "
        "unset = they read the primary",
    )
    read_db_pool_max_size: int = Field(default=10, ge=1, description="Connections to the read replica per process")
    read_db_max_lag_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A replica further behind than this (or unreachable) is left alone: its reads go to the "
        "primary until it catches up",
    )
    db_statement_cache_size: int = Field(
        default=100,
        ge=0,
        description="Prepared statements asyncpg keeps per connection; 0 behind PgBouncer < 1.21 in transaction "
        "pooling (a named statement lives on one server connection, the next transaction may get another)",
    )
    cache_ttl_seconds: float = Field(
        default=60.0, gt=0, description="TTL of cached rows (events, ratings, profiles); invalidation is explicit"
    )
    cache_list_ttl_seconds: float = Field(default=15.0, gt=0, description="TTL of cached first pages of ListEvents")

    # --- server ---------------------------------------------------------------------------------------------
    grpc_host: str = "0.0.0.0"
    grpc_port: int = Field(default=0, ge=0, le=65535, description="0 = ephemeral; each service sets its default")
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    max_concurrent_rpcs: int = Field(
        default=256,
        ge=1,
        description="RPCs handled at once; more are refused at once with RESOURCE_EXHAUSTED (health excluded)",
    )
    shutdown_drain_seconds: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="On SIGTERM, keep accepting RPCs this long while health says NOT_SERVING (load balancers "
        "notice), then stop accepting and let in-flight RPCs finish within shutdown_grace_seconds",
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; 0 = no endpoint"
    )
    metrics_host: str = Field(default="0.0.0.0", description="Address the /metrics endpoint binds")
    log_level: LogLevel = "INFO"
    log_json: bool = True
    public_base_url: str = "http://localhost:8080"

    environment: Environment = Field(
        default="production",
        description="production (default) refuses the repository's published HS256 secrets at start-up; "
        "development (set by make run) accepts them",
    )

    # --- auth -----------------------------------------------------------------------------------------------
    jwt_algorithms: Annotated[tuple[JwtAlgorithm, ...], NoDecode] = ("HS256",)
    jwt_hs256_secret: SecretStr | None = Field(default=None, validate_default=True)
    jwt_public_key: str | None = None
    jwt_public_key_file: Path | None = Field(default=None, validate_default=True)
    jwt_issuer: str = Field(min_length=1)
    jwt_audience: str = Field(min_length=1)
    jwt_leeway_seconds: float = Field(default=30.0, ge=0, le=600)
    jwt_max_lifetime_seconds: float = Field(
        default=86_400.0,
        ge=60,
        description="Tokens whose exp lies further ahead than this (plus the leeway) are refused",
    )

    @property
    def grpc_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    # --- field validators -----------------------------------------------------------------------------------
    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgres://")):
            raise PydanticCustomError("dsn", "must start with postgresql:// or postgres://")
        return value

    @field_validator("read_database_url")
    @classmethod
    def _check_read_database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise PydanticCustomError("dsn", "must start with postgresql:// or postgres://")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _check_public_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise PydanticCustomError("url", "must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: Any) -> Any:
        if isinstance(value, str):
            items = [item.strip().upper() for item in value.split(",") if item.strip()]
            if not items:
                raise PydanticCustomError("empty", "must list at least one of HS256, RS256, ES256")
            return tuple(dict.fromkeys(items))
        return value

    @field_validator("jwt_public_key", mode="before")
    @classmethod
    def _unescape_pem(cls, value: Any) -> Any:
        # PEM in a single-line env var usually arrives with literal "\n" sequences.
        if isinstance(value, str) and "\n" not in value and "\\n" in value:
            return value.replace("\\n", "\n")
        return value

    # --- cross-field checks -----------------------------------------------------------------------------
    # Done in field validators (``validate_default=True``, fields declared after the ones they depend on) rather
    # than one model validator, so they are reported together with every other problem in one go.

    @field_validator("db_pool_max_size")
    @classmethod
    def _check_pool_bounds(cls, value: int, info: ValidationInfo) -> int:
        min_size = info.data.get("db_pool_min_size")
        if isinstance(min_size, int) and min_size > value:
            raise _problem(
                f"{ENV_PREFIX}DB_POOL_MIN_SIZE: must not exceed {ENV_PREFIX}DB_POOL_MAX_SIZE ({min_size} > {value})"
            )
        return value

    @field_validator("jwt_hs256_secret")
    @classmethod
    def _check_hs256_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        algorithms = info.data.get("jwt_algorithms")
        if not algorithms or "HS256" not in algorithms:
            return value
        secret = value.get_secret_value() if value is not None else ""
        if not secret:
            raise _problem(
                f"{ENV_PREFIX}JWT_HS256_SECRET: required, not set ({ENV_PREFIX}JWT_ALGORITHMS={','.join(algorithms)})"
            )
        if secret in PUBLIC_HS256_SECRETS and info.data.get("environment", "production") == "production":
            raise _problem(
                f"{ENV_PREFIX}JWT_HS256_SECRET: is a placeholder published in the cowatch repository; set a random "
                f"secret (e.g. `openssl rand -base64 48`), or {ENV_PREFIX}ENVIRONMENT=development on a dev machine"
            )
        if len(secret.encode()) < MIN_HS256_SECRET_BYTES:
            raise _problem(
                f"{ENV_PREFIX}JWT_HS256_SECRET: too short, HS256 needs at least {MIN_HS256_SECRET_BYTES} bytes"
            )
        return value

    @field_validator("jwt_public_key_file")
    @classmethod
    def _check_public_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        algorithms = info.data.get("jwt_algorithms")
        asymmetric = sorted(set(algorithms or ()) & {"RS256", "ES256"})
        if not asymmetric:
            return value
        if "jwt_public_key" not in info.data:
            return value  # already reported
        inline: str | None = info.data["jwt_public_key"]
        if inline and value is not None:
            raise _problem(f"{ENV_PREFIX}JWT_PUBLIC_KEY_FILE: set either it or {ENV_PREFIX}JWT_PUBLIC_KEY, not both")
        source = f"{ENV_PREFIX}JWT_PUBLIC_KEY"
        pem = inline
        if value is not None:
            source = f"{ENV_PREFIX}JWT_PUBLIC_KEY_FILE"
            pem = _read_key_file(value)
        if not pem:
            raise _problem(
                f"{ENV_PREFIX}JWT_PUBLIC_KEY (or {ENV_PREFIX}JWT_PUBLIC_KEY_FILE): required, not set "
                f"({ENV_PREFIX}JWT_ALGORITHMS={','.join(algorithms or ())})"
            )
        problems = _public_key_problems(pem, asymmetric, source)
        if problems:
            raise _problem("\n".join(problems))
        return value

    @model_validator(mode="after")
    def _load_public_key_file(self) -> CommonSettings:
        # Consumers only look at jwt_public_key; the model is frozen, hence object.__setattr__.
        if self.jwt_public_key_file is not None and not self.jwt_public_key:
            object.__setattr__(self, "jwt_public_key", _read_key_file(self.jwt_public_key_file))
        return self


class TracingSettings(BaseSettings):
    """OpenTelemetry traces (:mod:`services.common.tracing`), read from the OpenTelemetry specification's own
    environment variables rather than ``COWATCH_`` ones, so a collector's usual deployment recipe applies as is.

    Off by default, unlike the specification's ``otlp`` default: a process with no collector to talk to would
    otherwise retry exports to ``localhost:4317`` forever. Tracing turns on when an OTLP endpoint is named
    (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or an exporter is chosen
    (``OTEL_TRACES_EXPORTER=otlp|console``); ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` keeps it
    off whatever else is set. Everything else (headers, timeouts, TLS, ``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_PROPAGATORS``) the SDK reads itself.
    """

    model_config = SettingsConfigDict(
        env_prefix="OTEL_", case_sensitive=False, env_ignore_empty=True, extra="ignore", frozen=True
    )

    sdk_disabled: bool = Field(default=False, description="OTEL_SDK_DISABLED: true = no traces whatever else is set")
    traces_exporter: Literal["otlp", "console", "none"] | None = Field(
        default=None,
        description="OTEL_TRACES_EXPORTER: otlp (gRPC, the one OTLP transport shipped), console (stdout) or none; "
        "unset = otlp if an OTLP endpoint is set, else no tracing",
    )
    exporter_otlp_endpoint: str | None = Field(default=None, description="OTEL_EXPORTER_OTLP_ENDPOINT")
    exporter_otlp_traces_endpoint: str | None = Field(default=None, description="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    exporter_otlp_protocol: Literal["grpc"] | None = Field(
        default=None, description="OTEL_EXPORTER_OTLP_PROTOCOL: only grpc is installed (http/protobuf is not)"
    )
    exporter_otlp_traces_protocol: Literal["grpc"] | None = Field(
        default=None, description="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: as OTEL_EXPORTER_OTLP_PROTOCOL"
    )

    @field_validator("traces_exporter", mode="before")
    @classmethod
    def _lower_exporter(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def exporter(self) -> Literal["otlp", "console"] | None:
        """The exporter to install, or ``None``: tracing is off."""
        if self.sdk_disabled or self.traces_exporter == "none":
            return None
        if self.traces_exporter is not None:
            return self.traces_exporter
        if self.exporter_otlp_endpoint or self.exporter_otlp_traces_endpoint:
            return "otlp"
        return None


def _problem(message: str) -> PydanticCustomError:
    """A validation error whose message already names the environment variable(s) concerned."""
    return PydanticCustomError(_PROBLEM, message)


def _read_key_file(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise _problem(f"{ENV_PREFIX}JWT_PUBLIC_KEY_FILE: cannot read {path}: {exc.strerror or exc}") from None


def _public_key_problems(pem: str, algorithms: Sequence[str], source: str) -> list[str]:
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        return [f"{source}: not a PEM-encoded public key"]
    problems: list[str] = []
    for alg in algorithms:
        if alg == "RS256":
            if not isinstance(key, rsa.RSAPublicKey):
                problems.append(f"{source}: RS256 is allowed but the key is not an RSA public key")
            elif key.key_size < 2048:
                problems.append(f"{source}: RSA key too small ({key.key_size} bits, need >= 2048)")
        if alg == "ES256" and not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
            problems.append(f"{source}: ES256 is allowed but the key is not a P-256 EC public key")
    return problems


def env_names(cls: type[BaseSettings], field_name: str) -> list[str]:
    """The environment variable names that feed ``field_name``, preferred first."""
    info: FieldInfo | None = cls.model_fields.get(field_name)
    if info is not None:
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            return [str(choice).upper() for choice in alias.choices if isinstance(choice, str)]
        if isinstance(alias, str):
            return [alias.upper()]
    prefix = str(cls.model_config.get("env_prefix") or "")
    return [f"{prefix}{field_name}".upper()]


def _field_for_loc(cls: type[BaseSettings], loc: object) -> str | None:
    if not isinstance(loc, str):
        return None
    if loc in cls.model_fields:
        return loc
    for name in cls.model_fields:
        if loc.upper() in env_names(cls, name):
            return name
    return None


def format_validation_error(cls: type[BaseSettings], error: ValidationError) -> list[str]:
    """One human line per problem, naming the environment variable (never echoing its value)."""
    lines: list[str] = []
    for item in error.errors(include_url=False, include_input=False):
        loc = item.get("loc", ())
        field = _field_for_loc(cls, loc[0]) if loc else None
        msg = str(item.get("msg", "invalid"))
        if field is None or item.get("type") == _PROBLEM:
            lines.extend(line for line in msg.splitlines() if line)
            continue
        names = env_names(cls, field)
        label = names[0] if len(names) == 1 else f"{names[0]} (or {', '.join(names[1:])})"
        if item.get("type") == "missing":
            msg = "required, not set"
        lines.append(f"{label}: {msg}")
    return lines


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment (plus ``overrides``); on error print the problems, exit with 2."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = format_validation_error(cls, exc)
        print(f"{getattr(cls, 'service_name', cls.__name__)}: invalid configuration:", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None
