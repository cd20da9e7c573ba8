"""Every setting of every process is documented in .env.example (the configuration reference)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from services.booking.app import BookingSettings
from services.booking.offer_sweep import OfferSweepSettings
from services.common.settings import TracingSettings, env_names
from services.event.app import EventSettings
from services.notification.settings import StandinSettings, WorkerSettings
from services.review.app import ReviewSettings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
SETTINGS: list[type[BaseSettings]] = [
    EventSettings,
    BookingSettings,
    ReviewSettings,
    WorkerSettings,
    StandinSettings,
    OfferSweepSettings,
    TracingSettings,
]


def documented() -> set[str]:
    # "NAME=value" lines, commented out ("# NAME=") or not.
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))


@pytest.mark.parametrize("settings_cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_setting_is_documented(settings_cls: type[BaseSettings]) -> None:
    names = documented()
    missing = [
        env_names(settings_cls, field)[0]
        for field in settings_cls.model_fields
        if not any(name in names for name in env_names(settings_cls, field))
    ]
    assert not missing, f"add these to .env.example: {missing}"


def test_make_run_settings_are_documented() -> None:
    from services.dev.run import DEFAULT_PORTS, DEV_PREFIX
    from services.dev.web import CORS_ORIGINS_ENV

    names = documented()
    expected = [CORS_ORIGINS_ENV, *(f"{DEV_PREFIX}{role.upper()}_PORT" for role in DEFAULT_PORTS)]
    assert not [n for n in expected if n not in names], "add these to .env.example"
