"""Small pure pieces: request context, clocks, log redaction, db helpers against fake pools."""

from __future__ import annotations

import asyncio
import io
import json
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.common import context, db
from services.common.clock import ManualClock, SystemClock
from services.common.errors import Unauthenticated, Unavailable
from services.common.identity import User
from services.common.logging import configure_logging, get_logger


def test_context_is_empty_outside_an_rpc():
    assert context.current_user() is None
    assert context.request_id() == ""
    with pytest.raises(Unauthenticated) as info:
        context.require_user()
    assert info.value.reason == "UNAUTHENTICATED"


def test_bind_sets_and_restores():
    user = User("u-1", "Ada")
    with context.bind(request_id="r-1", user=user):
        assert context.require_user() is user
        assert context.request_id() == "r-1"
    assert context.current_user() is None
    assert context.request_id() == ""


async def test_context_is_per_task():
    async def worker(i: int) -> tuple[str, str]:
        with context.bind(request_id=f"r{i}", user=User(f"u{i}", "n")):
            await asyncio.sleep(0.01)
            return context.request_id(), context.require_user().id

    results = await asyncio.gather(*(worker(i) for i in range(20)))
    assert results == [(f"r{i}", f"u{i}") for i in range(20)]


def test_manual_clock():
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
    assert clock.advance(90) == datetime(2030, 1, 1, 0, 1, 30, tzinfo=UTC)
    assert clock.advance(timedelta(hours=1), minutes=1) == datetime(2030, 1, 1, 1, 2, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="naive"):
        ManualClock(datetime(2030, 1, 1))
    now = SystemClock().now()
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)


def test_sensitive_keys_are_redacted_in_logs():
    buffer = io.StringIO()
    configure_logging(stream=buffer)
    try:
        get_logger("test").info(
            "login",
            authorization="Bearer abc.def.ghi",
            password="hunter2",
            meta={"address": "Main St 1", "city": "Berlin"},
            user_id="u-1",
        )
    finally:
        configure_logging()
    line = json.loads(buffer.getvalue())
    assert line["authorization"] == line["password"] == "[REDACTED]"
    assert line["meta"] == {"address": "[REDACTED]", "city": "Berlin"}
    assert line["user_id"] == "u-1"
    assert line["logger"] == "test"
    assert "abc.def.ghi" not in buffer.getvalue() and "hunter2" not in buffer.getvalue()


class FakePool:
    """Just enough of asyncpg.Pool for db.ping / db.transaction."""

    def __init__(self, *, hang: bool = False, fail: BaseException | None = None) -> None:
        self.hang = hang
        self.fail = fail

    async def _get(self) -> Any:
        if self.fail is not None:
            raise self.fail
        if self.hang:
            await asyncio.sleep(3600)
        return FakeConnection()

    @asynccontextmanager
    async def _ctx(self) -> Any:
        yield await self._get()

    def acquire(self, *, timeout: float | None = None) -> Any:
        pool = self

        class Acquire:
            def __await__(self) -> Any:
                return asyncio.wait_for(pool._get(), timeout).__await__()

            async def __aenter__(self) -> Any:
                return await pool._get()

            async def __aexit__(self, *exc: object) -> None:
                return None

        return Acquire()

    async def release(self, conn: Any) -> None:
        return None


class FakeConnection:
    async def fetchval(self, query: str) -> int:
        return 1


async def test_ping_never_raises():
    assert await db.ping(FakePool(), within_seconds=0.5) is True  # type: ignore[arg-type]
    assert await db.ping(FakePool(hang=True), within_seconds=0.05) is False  # type: ignore[arg-type]
    assert await db.ping(FakePool(fail=ConnectionRefusedError()), within_seconds=0.5) is False  # type: ignore[arg-type]


async def test_pool_acquire_timeout_is_database_unavailable():
    with pytest.raises(Unavailable) as info:
        async with db.connection(FakePool(hang=True), acquire_timeout=0.05):  # type: ignore[arg-type]
            pass
    assert info.value.reason == "DATABASE_UNAVAILABLE"
