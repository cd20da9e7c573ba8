"""Worker and stand-in settings: fail fast with one line per variable; no JWT settings needed."""

from __future__ import annotations

import os

import pytest

from services.common.settings import load_settings as load
from services.notification.settings import StandinSettings, WorkerSettings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith("COWATCH_") or name.upper() in {"DATABASE_URL", "REDIS_URL"}:
            monkeypatch.delenv(name)
    return monkeypatch


def exit_message(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        load(WorkerSettings)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pydantic" not in err.lower()
    return err


def test_missing_values_exit_2_naming_each_variable_and_no_jwt_is_asked_for(env, capsys):
    err = exit_message(capsys)
    assert err.splitlines()[0] == "cowatch-notification-worker: invalid configuration:"
    assert "COWATCH_DATABASE_URL (or DATABASE_URL): required, not set" in err
    assert "COWATCH_NOTIFICATION_ADDRESS: required, not set" in err
    assert "JWT" not in err  # the worker verifies no tokens


def test_bad_values_are_each_reported(env, capsys):
    env.setenv("DATABASE_URL", "mysql://nope")
    env.setenv("COWATCH_NOTIFICATION_ADDRESS", "http://notification:50060")
    env.setenv("COWATCH_BATCH_SIZE", "0")
    env.setenv("COWATCH_BACKOFF_BASE_SECONDS", "10")
    env.setenv("COWATCH_BACKOFF_CAP_SECONDS", "5")
    env.setenv("COWATCH_LEASE_SECONDS", "1")
    env.setenv("COWATCH_LEASE_HEARTBEAT_SECONDS", "0.6")
    err = exit_message(capsys)
    assert "must start with postgresql://" in err
    assert "COWATCH_NOTIFICATION_ADDRESS: must be host:port" in err
    assert "COWATCH_BATCH_SIZE:" in err
    assert "COWATCH_BACKOFF_CAP_SECONDS: must not be below COWATCH_BACKOFF_BASE_SECONDS" in err
    assert "COWATCH_LEASE_HEARTBEAT_SECONDS: must be at most half of COWATCH_LEASE_SECONDS" in err


def test_defaults(env):
    env.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1/cowatch")
    env.setenv("COWATCH_NOTIFICATION_ADDRESS", "127.0.0.1:50060")
    s = load(WorkerSettings)
    assert s.notification_address == "127.0.0.1:50060"
    assert s.max_attempts == 10 and s.batch_size == 100
    assert s.backoff_base_seconds < s.backoff_cap_seconds
    assert s.metrics_port == 0  # no endpoint unless asked for
    assert s.lease_seconds == 10.0 and s.heartbeat_seconds == s.lease_seconds / 3
    assert "postgres" not in repr(s)  # the DSN may carry a password


def test_standin_defaults_to_a_fixed_local_port(env):
    s = load(StandinSettings)
    assert (s.standin_host, s.standin_port) == ("127.0.0.1", 50060)
    env.setenv("COWATCH_STANDIN_PORT", "50999")
    assert load(StandinSettings).standin_port == 50999


def test_listen_url_defaults_to_the_pool_and_takes_the_direct_url_behind_pgbouncer(env, capsys):
    env.setenv("COWATCH_DATABASE_URL", "postgresql://cowatch@pgbouncer:6432/cowatch")
    env.setenv("COWATCH_NOTIFICATION_ADDRESS", "127.0.0.1:50060")
    s = load(WorkerSettings)
    assert s.listen_url == s.database_url  # no PgBouncer: one URL for everything
    assert s.db_statement_cache_size == 100  # asyncpg's default
    env.setenv("COWATCH_DATABASE_DIRECT_URL", "postgresql://cowatch@postgres:5432/cowatch")
    env.setenv("COWATCH_DB_STATEMENT_CACHE_SIZE", "0")
    s = load(WorkerSettings)
    assert s.listen_url == "postgresql://cowatch@postgres:5432/cowatch"
    assert s.database_url.startswith("postgresql://cowatch@pgbouncer")
    assert s.db_statement_cache_size == 0
    assert "postgres:5432" not in repr(s)  # may carry a password, like the pool's URL
    env.setenv("COWATCH_DATABASE_DIRECT_URL", "pgbouncer:6432")
    env.setenv("COWATCH_DB_STATEMENT_CACHE_SIZE", "-1")
    err = exit_message(capsys)
    assert "COWATCH_DATABASE_DIRECT_URL: must start with postgresql://" in err
    assert "COWATCH_DB_STATEMENT_CACHE_SIZE:" in err
