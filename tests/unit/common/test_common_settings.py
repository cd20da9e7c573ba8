from __future__ import annotations

import pytest

from services.common.auth import TokenVerifier
from services.common.settings import CommonSettings, load_settings
from tests.unit.common.keys import AUDIENCE, HS_SECRET, ISSUER, KeyPair


class EventSettings(CommonSettings):
    grpc_port: int = 50051


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean environment: no COWATCH_* / DATABASE_URL / REDIS_URL from the machine running the tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("COWATCH_") or name.upper() in {"DATABASE_URL", "REDIS_URL"}:
            monkeypatch.delenv(name)
    return monkeypatch


def minimal(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/cowatch")
    env.setenv("COWATCH_JWT_ISSUER", ISSUER)
    env.setenv("COWATCH_JWT_AUDIENCE", AUDIENCE)
    env.setenv("COWATCH_JWT_HS256_SECRET", HS_SECRET)


def exit_message(capsys: pytest.CaptureFixture[str], cls: type[CommonSettings] = EventSettings) -> str:
    with pytest.raises(SystemExit) as info:
        load_settings(cls)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "pydantic" not in err.lower()
    return err


def test_missing_required_values_exit_2_naming_each_env_variable(env, capsys):
    err = exit_message(capsys)
    assert "COWATCH_DATABASE_URL (or DATABASE_URL): required, not set" in err
    assert "COWATCH_JWT_ISSUER: required, not set" in err
    assert "COWATCH_JWT_AUDIENCE: required, not set" in err
    assert "COWATCH_JWT_HS256_SECRET: required, not set" in err


def test_defaults_and_aliases(env):
    minimal(env)
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    settings = load_settings(EventSettings)
    assert settings.database_url.startswith("postgresql://")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.grpc_port == 50051
    assert settings.grpc_host == "0.0.0.0"
    assert (settings.db_pool_min_size, settings.db_pool_max_size) == (1, 10)
    assert settings.shutdown_grace_seconds == 10
    assert settings.log_json is True
    assert settings.jwt_algorithms == ("HS256",)
    assert settings.jwt_leeway_seconds == 30
    assert settings.public_base_url == "http://localhost:8080"
    assert "postgres@" not in repr(settings)


def test_prefixed_name_wins_and_values_parse(env):
    minimal(env)
    env.setenv("COWATCH_DATABASE_URL", "postgresql://app@db/cowatch")
    env.setenv("COWATCH_GRPC_PORT", "6000")
    env.setenv("COWATCH_LOG_JSON", "false")
    env.setenv("COWATCH_LOG_LEVEL", "debug")
    env.setenv("COWATCH_PUBLIC_BASE_URL", "https://cowatch.example/")
    settings = load_settings(EventSettings)
    assert settings.database_url == "postgresql://app@db/cowatch"
    assert settings.grpc_port == 6000
    assert settings.log_json is False
    assert settings.log_level == "DEBUG"
    assert settings.public_base_url == "https://cowatch.example"


def test_malformed_values_are_reported_by_env_name(env, capsys):
    minimal(env)
    env.setenv("DATABASE_URL", "mysql://nope")
    env.setenv("COWATCH_GRPC_PORT", "http")
    env.setenv("COWATCH_JWT_ALGORITHMS", "HS256,none")
    err = exit_message(capsys)
    assert "COWATCH_DATABASE_URL (or DATABASE_URL): must start with postgresql://" in err
    assert "COWATCH_GRPC_PORT:" in err
    assert "COWATCH_JWT_ALGORITHMS:" in err
    assert "mysql://nope" not in err  # values are never echoed (DSNs carry passwords)


def test_read_replica_defaults_to_the_primary_and_its_url_is_checked(env, capsys):
    minimal(env)
    assert load_settings(EventSettings).read_database_url is None  # lag-tolerant reads use the primary's pool
    env.setenv("COWATCH_READ_DATABASE_URL", "postgresql://app:pa55word@replica/cowatch")
    assert "pa55word" not in repr(load_settings(EventSettings))
    env.setenv("COWATCH_READ_DATABASE_URL", "mysql://app:pa55word@replica/cowatch")
    env.setenv("COWATCH_READ_DB_MAX_LAG_SECONDS", "0")
    err = exit_message(capsys)
    assert "COWATCH_READ_DATABASE_URL: must start with postgresql://" in err
    assert "COWATCH_READ_DB_MAX_LAG_SECONDS:" in err
    assert "pa55word" not in err


def test_short_hs256_secret_is_refused(env, capsys):
    minimal(env)
    env.setenv("COWATCH_JWT_HS256_SECRET", "too-short")
    assert "COWATCH_JWT_HS256_SECRET: too short" in exit_message(capsys)


def test_rs256_without_public_key_is_refused(env, capsys):
    minimal(env)
    env.setenv("COWATCH_JWT_ALGORITHMS", "RS256")
    assert "COWATCH_JWT_PUBLIC_KEY (or COWATCH_JWT_PUBLIC_KEY_FILE): required, not set" in exit_message(capsys)


def test_key_type_must_match_algorithm(env, capsys, ec_keys: KeyPair):
    minimal(env)
    env.setenv("COWATCH_JWT_ALGORITHMS", "RS256")
    env.setenv("COWATCH_JWT_PUBLIC_KEY", ec_keys.public_pem)
    assert "RS256 is allowed but the key is not an RSA public key" in exit_message(capsys)


def test_public_key_from_file_and_escaped_newlines(env, tmp_path, rsa_keys: KeyPair):
    minimal(env)
    env.setenv("COWATCH_JWT_ALGORITHMS", "HS256, RS256")
    key_file = tmp_path / "jwt.pub"
    key_file.write_text(rsa_keys.public_pem)
    env.setenv("COWATCH_JWT_PUBLIC_KEY_FILE", str(key_file))
    settings = load_settings(EventSettings)
    assert settings.jwt_algorithms == ("HS256", "RS256")
    assert settings.jwt_public_key == rsa_keys.public_pem
    assert TokenVerifier.from_settings(settings).algorithms == ("HS256", "RS256")

    env.delenv("COWATCH_JWT_PUBLIC_KEY_FILE")
    env.setenv("COWATCH_JWT_PUBLIC_KEY", rsa_keys.public_pem.replace("\n", "\\n"))
    assert load_settings(EventSettings).jwt_public_key == rsa_keys.public_pem


def test_unreadable_key_file_is_reported(env, capsys, tmp_path):
    minimal(env)
    env.setenv("COWATCH_JWT_ALGORITHMS", "ES256")
    env.setenv("COWATCH_JWT_PUBLIC_KEY_FILE", str(tmp_path / "missing.pem"))
    assert "COWATCH_JWT_PUBLIC_KEY_FILE: cannot read" in exit_message(capsys)


def test_pool_bounds_are_checked(env, capsys):
    minimal(env)
    env.setenv("COWATCH_DB_POOL_MIN_SIZE", "20")
    assert "COWATCH_DB_POOL_MIN_SIZE: must not exceed COWATCH_DB_POOL_MAX_SIZE" in exit_message(capsys)


def _env_example_secret() -> str:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / ".env.example").read_text()
    found = re.search(r"^COWATCH_JWT_HS256_SECRET=(.+)$", text, flags=re.MULTILINE)
    assert found is not None
    return found.group(1).strip()


@pytest.mark.parametrize("which", ["env.example", "dev"])
def test_published_secrets_are_refused_in_production_only(env, capsys, which: str):
    from services.dev.token import DEV_HS256_SECRET

    secret = _env_example_secret() if which == "env.example" else DEV_HS256_SECRET
    minimal(env)
    env.setenv("COWATCH_JWT_HS256_SECRET", secret)
    assert "COWATCH_JWT_HS256_SECRET: is a placeholder published" in exit_message(capsys)  # production by default
    env.setenv("COWATCH_ENVIRONMENT", "development")
    assert load_settings(EventSettings).jwt_hs256_secret is not None


def test_make_run_children_run_in_development():
    from services.dev.token import dev_auth_env

    assert dev_auth_env({})["COWATCH_ENVIRONMENT"] == "development"
