"""RedisCache against a real Redis (the session's, under its key prefix): hits, invalidation that wins every race
with a load, single-flight loads, cancellation, and what ends up in Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio

from services.common.cache import Codec, RedisCache, cache_from_settings
from services.common.metrics import ServerMetrics
from services.common.settings import CommonSettings
from tests.support.api import AUDIENCE, HS256_SECRET, ISSUER
from tests.support.servers import wait_until

CODEC: Codec[dict[str, Any]] = Codec("test", lambda v: v, lambda j: j)


def cache_settings(redis_url: str, prefix: str, **overrides: Any) -> CommonSettings:
    return CommonSettings(
        database_url="postgresql://unused@127.0.0.1/none",
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_hs256_secret=HS256_SECRET,
        redis_url=redis_url,
        redis_key_prefix=prefix,
        **overrides,
    )


@pytest_asyncio.fixture
async def cache(redis_url: str, redis_key_prefix: str) -> AsyncIterator[RedisCache]:
    # a generous Redis timeout: these tests are about races and single-flight, not a slow Redis (test_fault_redis)
    made = cache_from_settings(cache_settings(redis_url, redis_key_prefix, redis_timeout_seconds=5), ServerMetrics())
    assert isinstance(made, RedisCache)
    try:
        yield made
    finally:
        await made.aclose()


class Loader:
    """Counts loads; optionally blocks each one until released."""

    def __init__(self, *, block: bool = False, delay: float = 0.0) -> None:
        self.calls = 0
        self.cancelled = 0
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        if not block:
            self.gate.set()
        self.delay = delay
        self.value = "v1"

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        value = {"value": self.value, "load": self.calls}
        self.entered.set()
        try:
            await self.gate.wait()
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return value


def key() -> str:
    return f"thing:v1:{uuid.uuid4().hex}"


async def test_a_value_is_loaded_once_then_served_from_redis_until_invalidated(cache: RedisCache):
    k, load = key(), Loader()
    assert await cache.get_or_load(k, load, CODEC, ttl=30) == {"value": "v1", "load": 1}
    await cache.settle()
    for _ in range(3):
        assert await cache.get_or_load(k, load, CODEC, ttl=30) == {"value": "v1", "load": 1}
    assert load.calls == 1

    load.value = "v2"
    await cache.invalidate(k)
    assert await cache.get_or_load(k, load, CODEC, ttl=30) == {"value": "v2", "load": 2}


async def test_a_load_that_raced_with_a_write_never_serves_its_stale_value(cache: RedisCache):
    k, load = key(), Loader(block=True)
    reader = asyncio.create_task(cache.get_or_load(k, load, CODEC, ttl=30))
    await load.entered.wait()  # the load read the old row...
    await cache.invalidate(k)  # ...then the write committed and invalidated
    load.gate.set()
    assert (await reader)["load"] == 1  # that reader was concurrent with the write: the old row is fine for it
    await cache.settle()
    load.value = "v2"
    fresh = await cache.get_or_load(k, load, CODEC, ttl=30)
    assert fresh == {"value": "v2", "load": 2}  # the stale value it stored is never a hit


async def test_a_read_after_an_invalidation_does_not_join_an_older_load(cache: RedisCache):
    k, old = key(), Loader(block=True)
    first = asyncio.create_task(cache.get_or_load(k, old, CODEC, ttl=30))
    await old.entered.wait()
    await cache.invalidate(k)
    new = Loader()
    new.value = "v2"
    assert await cache.get_or_load(k, new, CODEC, ttl=30) == {"value": "v2", "load": 1}
    assert new.calls == 1
    old.gate.set()
    await first


async def test_a_cold_hot_key_costs_one_load_for_hundreds_of_concurrent_readers(cache: RedisCache):
    # The load is held open until every reader has joined it, so the assertion does not depend on how fast a busy
    # machine schedules 300 tasks (a reader arriving after the load stored its value would be a plain hit).
    k, load = key(), Loader(block=True)
    metrics = cache._metrics
    readers = [asyncio.create_task(cache.get_or_load(k, load, CODEC, ttl=30)) for _ in range(300)]
    await wait_until(
        lambda: metrics.value("cowatch_cache_coalesced_total", {"cache": "test"}) == 299, within=10, interval=0.005
    )
    load.gate.set()
    results = await asyncio.gather(*readers)
    assert load.calls == 1
    assert all(r == {"value": "v1", "load": 1} for r in results)
    assert metrics.value("cowatch_cache_loads_total", {"cache": "test"}) == 1
    assert metrics.value("cowatch_cache_coalesced_total", {"cache": "test"}) == 299


async def test_when_every_reader_gives_up_the_load_is_cancelled(cache: RedisCache):
    k, load = key(), Loader(block=True)
    readers = [asyncio.create_task(cache.get_or_load(k, load, CODEC, ttl=30)) for _ in range(5)]
    # all five share the one load
    await wait_until(lambda: cache._metrics.value("cowatch_cache_coalesced_total") == 4, within=5, interval=0.005)
    readers[0].cancel()
    await asyncio.sleep(0.01)
    assert load.cancelled == 0  # the others still wait for it
    for r in readers[1:]:
        r.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.sleep(0.01)
    assert load.cancelled == 1
    # and nothing is left behind: the next reader loads afresh
    load.gate.set()
    assert (await cache.get_or_load(k, load, CODEC, ttl=30))["load"] == 2


async def test_a_failing_load_reaches_every_waiter_and_is_not_cached(cache: RedisCache):
    k = key()
    calls = 0

    async def failing() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise LookupError("no such row")

    results = await asyncio.gather(
        *(cache.get_or_load(k, failing, CODEC, ttl=30) for _ in range(10)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, LookupError) for r in results)
    with pytest.raises(LookupError):
        await cache.get_or_load(k, failing, CODEC, ttl=30)
    assert calls == 2


async def test_list_pages_share_a_scope_and_one_invalidation_drops_them_all(cache: RedisCache):
    scope = f"things:list:{uuid.uuid4().hex}"
    pages = [f"{scope}:{n}" for n in range(3)]
    loads = [Loader() for _ in pages]
    for page, load in zip(pages, loads, strict=True):
        await cache.get_or_load(page, load, CODEC, ttl=30, scope=scope)
    await cache.settle()
    for page, load in zip(pages, loads, strict=True):
        await cache.get_or_load(page, load, CODEC, ttl=30, scope=scope)
    assert [load.calls for load in loads] == [1, 1, 1]
    await cache.invalidate(scope)
    for page, load in zip(pages, loads, strict=True):
        await cache.get_or_load(page, load, CODEC, ttl=30, scope=scope)
    assert [load.calls for load in loads] == [2, 2, 2]


async def test_keys_live_under_the_prefix_as_json_with_a_ttl(
    cache: RedisCache, redis_client: redis.asyncio.Redis, redis_key_prefix: str
):
    k = key()
    await cache.get_or_load(k, Loader(), CODEC, ttl=30)
    await cache.settle()
    await cache.invalidate(k)
    await cache.get_or_load(k, Loader(), CODEC, ttl=30)
    await cache.settle()
    value_key = f"{redis_key_prefix}{{{k}}}"
    stored = await redis_client.get(value_key)
    assert isinstance(stored, bytes)
    generation, stored_key, payload = stored.split(b"|", 2)
    assert generation == b"1" and stored_key == value_key.encode()
    assert json.loads(payload) == {"value": "v1", "load": 1}
    assert 25_000 < await redis_client.pttl(value_key) <= 33_000  # 30 s ± 10 % jitter
    assert await redis_client.get(f"{redis_key_prefix}{{{k}}}:gen") == b"1"
    assert await redis_client.ttl(f"{redis_key_prefix}{{{k}}}:gen") > 0


async def test_an_entry_that_is_not_ours_is_a_miss(
    cache: RedisCache, redis_client: redis.asyncio.Redis, redis_key_prefix: str
):
    k, other = key(), key()
    load = Loader()
    # a value under k claiming to be another key's (as a mixed-up reply would), and plain garbage
    await redis_client.set(f"{redis_key_prefix}{{{k}}}", f"0|{redis_key_prefix}{{{other}}}|{{}}".encode(), ex=30)
    assert (await cache.get_or_load(k, load, CODEC, ttl=30))["load"] == 1
    await redis_client.set(f"{redis_key_prefix}{{{k}}}", f"0|{redis_key_prefix}{{{k}}}|not json".encode(), ex=30)
    assert (await cache.get_or_load(k, load, CODEC, ttl=30))["load"] == 2


# --- two-phase invalidation: a hold before COMMIT, the invalidation after it -----------------------------------


async def cached_value(cache: RedisCache, k: str, load: Loader) -> dict[str, Any]:
    value = await cache.get_or_load(k, load, CODEC, ttl=30)
    await cache.settle()
    return value


async def test_a_writer_that_dies_between_commit_and_invalidation_leaves_nothing_stale(
    cache: RedisCache, redis_url: str, redis_key_prefix: str
):
    k, load = key(), Loader()
    assert (await cached_value(cache, k, load))["value"] == "v1"
    await cache.hold(k)  # the write's transaction, before COMMIT
    load.value = "v2"  # ... COMMIT ...; the process dies before invalidate(k) runs
    # Another process (the dead one's cache is gone) reads the committed value, and caches nothing while the hold
    # lives: every read until it expires goes to the database.
    other = cache_from_settings(cache_settings(redis_url, redis_key_prefix, redis_timeout_seconds=5), ServerMetrics())
    assert isinstance(other, RedisCache)
    try:
        assert (await cached_value(other, k, load)) == {"value": "v2", "load": 2}
        assert (await cached_value(other, k, load)) == {"value": "v2", "load": 3}
    finally:
        await other.aclose()


async def test_a_crashed_writers_hold_expires_on_its_own_even_on_a_busy_scope(redis_url: str, redis_key_prefix: str):
    settings = cache_settings(redis_url, redis_key_prefix, redis_timeout_seconds=5)
    dead, busy = (cache_from_settings(settings, ServerMetrics()) for _ in range(2))
    assert isinstance(dead, RedisCache) and isinstance(busy, RedisCache)
    dead._hold_seconds = 0.3  # a short hold, so the test needn't wait HOLD_SECONDS
    k, load = key(), Loader()
    try:
        await dead.hold(k)
        await dead.aclose()  # dies without invalidating
        for _ in range(3):  # other writers keep the scope busy, each ending its own hold
            await busy.hold(k)
            await busy.invalidate(k)
        calls = load.calls
        await cached_value(busy, k, load)
        await cached_value(busy, k, load)
        assert load.calls == calls + 2  # the dead writer's hold still lives: nothing cached
        await asyncio.sleep(0.4)
        await cached_value(busy, k, load)
        await cached_value(busy, k, load)
        assert load.calls == calls + 3  # expired: cached again
    finally:
        await busy.aclose()


async def test_an_invalidation_or_a_rollback_ends_the_hold_at_once(cache: RedisCache):
    for end in (cache.invalidate, cache.release):
        k, load = key(), Loader()
        await cached_value(cache, k, load)
        await cache.hold(k)
        assert (await cached_value(cache, k, load))["load"] == 2  # the entry from before the write is stale
        assert (await cached_value(cache, k, load))["load"] == 3  # and nothing is stored during the hold
        await end(k)
        assert (await cached_value(cache, k, load))["load"] == 4
        assert (await cached_value(cache, k, load))["load"] == 4  # a hit again


async def test_overlapping_writes_keep_the_scope_held_until_the_last_one_ends(cache: RedisCache):
    k, load = key(), Loader()
    await cache.hold(k)
    await cache.hold(k)
    await cache.invalidate(k)
    await cached_value(cache, k, load)
    assert (await cached_value(cache, k, load))["load"] == 2  # the second write has not committed yet
    await cache.invalidate(k)
    await cached_value(cache, k, load)
    assert (await cached_value(cache, k, load))["load"] == 3


async def test_only_a_load_that_will_be_stored_uses_the_filling_loader(cache: RedisCache):
    """``bypass`` (a read replica's loader) answers only while nothing is stored: a fill always comes from
    ``loader`` (the primary), so a lagging replica can never put an old value under a new generation."""
    k, primary, replica = key(), Loader(), Loader()
    replica.value = "lagging"
    assert (await cache.get_or_load(k, primary, CODEC, ttl=30, bypass=replica))["value"] == "v1"
    await cache.settle()
    assert (primary.calls, replica.calls) == (1, 0)

    cache.breaker.trip()  # Redis bypassed: the read is stored nowhere, the replica may answer
    assert (await cache.get_or_load(k, primary, CODEC, ttl=30, bypass=replica))["value"] == "lagging"
    assert (primary.calls, replica.calls) == (1, 1)
