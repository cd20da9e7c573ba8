"""Cache-aside in Redis for hot reads; Postgres stays the authority and answers whenever Redis can't.

    event = await cache.get_or_load(f"event:v1:{event_id}", load_event, EVENT_CODEC, ttl=60)
    ...
    # after the write's transaction committed:
    await cache.invalidate(f"event:v1:{event_id}", "events:list:v1")

**Keys and scopes.** An entry has a key and an invalidation *scope* (by default the key itself). Each scope has a
generation counter in Redis; an entry is stored together with the generation that was current when its load
*began*, and it is a hit only while that is still the scope's generation. ``invalidate(scope)`` increments the
counter (after the write committed), so a load racing with a write can never store a value that outlives the
write, and many keys can share one scope (every first page of ``ListEvents`` shares ``events:list``). Value and
generation are read with one ``MGET`` (one round trip per hit); both live under the same ``{scope}`` hash tag, so
this also works on Redis Cluster. Every key is under ``COWATCH_REDIS_KEY_PREFIX``; key names carry a schema
version (``event:v1:…``): a change of the stored shape bumps it. Values are JSON (never pickle), and each one
repeats its own Redis key, which is checked on read.

**Stampede protection.** Within a process, concurrent misses of the same key (and generation) share one load
(single-flight: one task, every caller awaits it; if all of them give up, the load is cancelled, and with it the
query). Across processes no lock is taken: a hot key that expires costs at most one database read per replica,
and a Redis lock would add a round trip and a wait on every miss, plus a failure mode of its own when the lock
holder dies. TTLs get ±10 % jitter so keys loaded together do not expire together.

**Degradation.** Every Redis call is bounded by ``COWATCH_REDIS_TIMEOUT_SECONDS`` (socket and overall) and goes
through a :class:`~services.common.breaker.CircuitBreaker`: after a few consecutive failures Redis is not asked at
all (``bypass``: the loader answers) until a background probe finds it healthy again. Storing a loaded value
happens in the background, so a request waits on Redis at most once, for at most that timeout. Invalidations that
could not reach Redis are kept (bounded) and replayed by the probe before the breaker closes, so this process
never reads an entry it has made stale (a failed invalidation opens the breaker at once). Redis errors never
reach the caller.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.common.breaker import BreakerState, CircuitBreaker
from services.common.logging import get_logger
from services.common.metrics import ServerMetrics
from services.common.settings import RedisSettings

__all__ = ["Cache", "Codec", "NullCache", "RedisCache", "cache_from_settings"]

T = TypeVar("T")

GENERATION_TTL_SECONDS: Final = 3600
"""How long a scope's generation counter outlives its last invalidation (must exceed any load's duration)."""
MAX_PENDING_INVALIDATIONS: Final = 100_000
TTL_JITTER: Final = 0.1
_SEP: Final = b"|"

_REDIS_ERRORS: Final = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)

_log = get_logger("cowatch.cache")


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How values of one kind become JSON and back. ``name`` labels the metrics (``cache="event"``)."""

    name: str
    encode: Callable[[T], Any]
    decode: Callable[[Any], T]


class Cache(Protocol):
    """The port the services use; :class:`RedisCache` in production, :class:`NullCache` without Redis."""

    async def get_or_load(
        self, key: str, loader: Callable[[], Awaitable[T]], codec: Codec[T], *, ttl: float, scope: str | None = None
    ) -> T:
        """The cached value of ``key``, else ``await loader()`` (stored for ``ttl`` seconds). A loader's
        exception propagates and nothing is stored."""
        ...

    async def invalidate(self, *scopes: str) -> None:
        """Make every entry of ``scopes`` stale. Call after the write's transaction committed. Never raises."""
        ...

    async def aclose(self) -> None: ...


class NullCache:
    """No Redis configured: every read is a load."""

    async def get_or_load(
        self, key: str, loader: Callable[[], Awaitable[T]], codec: Codec[T], *, ttl: float, scope: str | None = None
    ) -> T:
        return await loader()

    async def invalidate(self, *scopes: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


@dataclass(slots=True)
class _Flight:
    """The latest load of a key, in progress (or finished, while its value is being stored), that readers share.

    A reader that saw the scope's generation in Redis joins only a load that began under that same generation;
    a reader that could not ask Redis joins any load begun since this process's last invalidation.
    """

    generation: bytes | None
    epoch: int
    task: asyncio.Task[Any] = field(init=False)
    waiters: int = 0
    storing: bool = False

    def joinable(self, generation: bytes | None, epoch: int) -> bool:
        if generation is not None:
            return self.generation == generation
        return self.epoch == epoch


class RedisCache:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "cowatch:",
        timeout: float = 0.2,
        breaker_threshold: int = 5,
        breaker_reset_seconds: float = 2.0,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._timeout = timeout
        self._metrics = metrics or ServerMetrics()
        self.breaker = CircuitBreaker(
            "redis",
            failure_threshold=breaker_threshold,
            reset_timeout=breaker_reset_seconds,
            probe=self._probe,
            on_change=self._breaker_changed,
        )
        self._metrics.breaker_changed("redis", BreakerState.CLOSED)
        self._flights: dict[str, _Flight] = {}
        self._epoch = 0  # bumped on every local invalidation: keys single-flight while Redis is bypassed
        self._pending: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    # --- keys ------------------------------------------------------------------------------------------------

    def _value_key(self, key: str, scope: str) -> str:
        return f"{self._prefix}{{{scope}}}" if key == scope else f"{self._prefix}{{{scope}}}:{key}"

    def _generation_key(self, scope: str) -> str:
        return f"{self._prefix}{{{scope}}}:gen"

    # --- reads -----------------------------------------------------------------------------------------------

    async def get_or_load(
        self, key: str, loader: Callable[[], Awaitable[T]], codec: Codec[T], *, ttl: float, scope: str | None = None
    ) -> T:
        scope = scope or key
        value_key = self._value_key(key, scope)
        generation: bytes | None = None
        if self.breaker.allow():
            try:
                async with asyncio.timeout(self._timeout):
                    raw, current = await self._redis.mget(value_key, self._generation_key(scope))
            except _REDIS_ERRORS as exc:
                self._redis_failed("get", exc)
            else:
                self.breaker.success()
                generation = current if isinstance(current, bytes) else b"0"  # never decoded: bytes
                if isinstance(raw, bytes):
                    found = self._decode(raw, value_key, generation, codec)
                    if found is not None:
                        self._metrics.cache_result(codec.name, "hit")
                        return found[0]
        self._metrics.cache_result(codec.name, "miss" if generation is not None else "bypass")
        return await self._load(value_key, generation, loader, codec, ttl)

    def _decode(self, raw: bytes, value_key: str, generation: bytes, codec: Codec[T]) -> tuple[T] | None:
        stored_generation, _, rest = raw.partition(_SEP)
        stored_key, _, payload = rest.partition(_SEP)
        if stored_generation != generation or stored_key != value_key.encode():
            return None
        try:
            return (codec.decode(json.loads(payload)),)
        except Exception:  # a value written by an incompatible version: treat as a miss, it gets overwritten
            _log.warning("undecodable cache entry", key=value_key, exc_info=True)
            return None

    async def _load(
        self,
        value_key: str,
        generation: bytes | None,
        loader: Callable[[], Awaitable[T]],
        codec: Codec[T],
        ttl: float,
    ) -> T:
        flight = self._flights.get(value_key)
        if flight is None or not flight.joinable(generation, self._epoch):
            flight = self._flights[value_key] = _Flight(generation, self._epoch)
            flight.task = asyncio.get_running_loop().create_task(self._run_load(value_key, flight, loader, codec, ttl))
            flight.task.add_done_callback(lambda _t: self._load_done(value_key, flight))
            self._metrics.cache_load(codec.name, coalesced=False)
        else:
            self._metrics.cache_load(codec.name, coalesced=True)
        flight.waiters += 1
        try:
            result: T = await asyncio.shield(flight.task)
            return result
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()  # every caller gave up (deadlines): stop the query too

    def _load_done(self, flight_key: str, flight: _Flight) -> None:
        if not flight.task.cancelled():
            flight.task.exception()  # mark retrieved: the waiters got it
        if not flight.storing:
            self._end_flight(flight_key, flight)

    def _end_flight(self, flight_key: str, flight: _Flight) -> None:
        if self._flights.get(flight_key) is flight:
            del self._flights[flight_key]

    async def _run_load(
        self, value_key: str, flight: _Flight, loader: Callable[[], Awaitable[T]], codec: Codec[T], ttl: float
    ) -> T:
        value = await loader()
        if flight.generation is not None and self.breaker.closed:
            payload = json.dumps(codec.encode(value), separators=(",", ":"), ensure_ascii=False).encode()
            blob = _SEP.join((flight.generation, value_key.encode(), payload))
            # Until the value is in Redis, readers that miss join this finished flight instead of loading again.
            flight.storing = True
            self._spawn(self._store(value_key, blob, ttl), lambda: self._end_flight(value_key, flight))
        return value

    async def _store(self, value_key: str, blob: bytes, ttl: float) -> None:
        ttl_ms = max(1, int(ttl * 1000 * random.uniform(1 - TTL_JITTER, 1 + TTL_JITTER)))
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(value_key, blob, px=ttl_ms)
        except _REDIS_ERRORS as exc:
            self._redis_failed("set", exc)
        else:
            self.breaker.success()

    # --- invalidation ----------------------------------------------------------------------------------------

    async def invalidate(self, *scopes: str) -> None:
        self._epoch += 1
        if not scopes:
            return
        if not self.breaker.allow():
            self._remember(scopes)
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._bump(scopes)
        except _REDIS_ERRORS as exc:
            self._redis_failed("invalidate", exc)
            self._remember(scopes)
            # Redis may still hold what this write made stale: stop reading it until the probe replayed this.
            self.breaker.trip()
        else:
            self.breaker.success()

    async def _bump(self, scopes: Iterable[str]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for scope in scopes:
            generation_key = self._generation_key(scope)
            pipe.incr(generation_key)
            pipe.expire(generation_key, GENERATION_TTL_SECONDS)
            pipe.unlink(self._value_key(scope, scope))
        await pipe.execute()

    def _remember(self, scopes: Iterable[str]) -> None:
        if len(self._pending) >= MAX_PENDING_INVALIDATIONS:
            _log.error("too many invalidations pending while Redis is unavailable: relying on TTLs")
            return
        self._pending.update(scopes)

    # --- breaker ---------------------------------------------------------------------------------------------

    def _redis_failed(self, operation: str, exc: BaseException) -> None:
        self._metrics.cache_error(operation)
        _log.debug("redis call failed", operation=operation, error=type(exc).__name__)
        self.breaker.failure()

    def _breaker_changed(self, name: str, state: BreakerState) -> None:
        self._metrics.breaker_changed(name, state)

    async def _probe(self) -> None:
        """Redis answers again: replay the invalidations it missed, then the breaker closes."""
        async with asyncio.timeout(self._timeout):
            await self._redis.ping()
        while self._pending:
            batch = [self._pending.pop() for _ in range(min(1000, len(self._pending)))]
            try:
                async with asyncio.timeout(max(self._timeout, 1.0)):
                    await self._bump(batch)
            except BaseException:
                self._pending.update(batch)
                raise

    # --- lifecycle -------------------------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], then: Callable[[], None] | None = None) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._background.discard(t)
            if then is not None:
                then()

        task.add_done_callback(done)

    async def settle(self) -> None:
        """Wait for background stores to finish (tests and benchmarks)."""
        while self._background:
            await asyncio.wait(list(self._background))

    async def aclose(self) -> None:
        await self.breaker.aclose()
        if self._background:
            await asyncio.wait(list(self._background), timeout=self._timeout * 2)
        for task in list(self._background):
            task.cancel()
        await self._redis.aclose()


def cache_from_settings(settings: RedisSettings, metrics: ServerMetrics | None = None) -> Cache:
    """A :class:`RedisCache` when ``COWATCH_REDIS_URL`` is set, else a :class:`NullCache`. Connects lazily: a
    Redis that is down at start only means bypassed reads until it answers."""
    if not settings.redis_url:
        return NullCache()
    timeout = settings.redis_timeout_seconds
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),  # the breaker decides about retrying, not the client
        client_name=f"{settings.service_name}",
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    return RedisCache(
        client,
        prefix=settings.redis_key_prefix,
        timeout=timeout,
        breaker_threshold=settings.redis_breaker_failure_threshold,
        breaker_reset_seconds=settings.redis_breaker_reset_seconds,
        metrics=metrics,
    )
