"""Cache-aside in Redis for hot reads; Postgres stays the authority and answers whenever Redis can't.

    event = await cache.get_or_load(f"event:v1:{event_id}", load_event, EVENT_CODEC, ttl=60)
    ...
    # in the write's transaction, before COMMIT:
    await cache.hold(f"event:v1:{event_id}", "events:list:v1")
    # after COMMIT (or release(...) after a rollback):
    await cache.invalidate(f"event:v1:{event_id}", "events:list:v1")

Writes do not call these themselves: the unit of work's dispatcher does (:func:`invalidation`).

**Keys and scopes.** An entry has a key and an invalidation *scope* (by default the key itself). Each scope has a
generation counter in Redis; an entry is stored together with the generation that was current when its load
*began*, and it is a hit only while that is still the scope's generation. ``invalidate(scope)`` increments the
counter (after the write committed), so a load racing with a write can never store a value that outlives the
write, and many keys can share one scope (every first page of ``ListEvents`` shares ``events:list``). Value and
generation are read with one ``MGET`` (one round trip per hit); all of a scope's keys live under the same
``{scope}`` hash tag, so this also works on Redis Cluster. Every key is under ``COWATCH_REDIS_KEY_PREFIX``; key
names carry a schema version (``event:v1:…``): a change of the stored shape bumps it. Values are JSON (never
pickle), and each one repeats its own Redis key, which is checked on read.

**Two-phase invalidation.** A write invalidates twice: ``hold(scope)`` in its transaction, before COMMIT, bumps
the generation and adds a *hold* (a token in a sorted set, expiring after ``HOLD_SECONDS``); ``invalidate(scope)``
after COMMIT bumps the generation again and removes the token (``release(scope)`` removes it after a rollback).
While a scope has a live hold, reads load from Postgres and store nothing: a store is a short Lua script, "only if
the generation is still the load's and no hold lives", run in the background, off the request path. So a process
that dies between COMMIT and its after-commit invalidation leaves no stale entry behind: the entries from before
the write were made stale by the hold, and none was stored while the hold lived (the scope is merely uncached
until it expires). Each hold expires on its own, so a crashed writer's hold never outlives ``HOLD_SECONDS`` even
while other writers keep the scope busy. The price: one more Redis round trip per write, inside its transaction
(bounded and breaker-guarded like any other call; the booking's seat ``UPDATE`` comes after it, so it does not
lengthen the event row's lock).

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
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

import redis.asyncio
import redis.exceptions
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.common.breaker import BreakerState, CircuitBreaker
from services.common.dbtypes import Conn
from services.common.logging import get_logger
from services.common.metrics import ServerMetrics
from services.common.settings import RedisSettings
from services.common.uow import DomainEvent, Handlers

__all__ = ["Cache", "Codec", "NullCache", "RedisCache", "cache_from_settings", "invalidation"]

T = TypeVar("T")
E = TypeVar("E", bound=DomainEvent)

GENERATION_TTL_SECONDS: Final = 3600
"""How long a scope's generation counter outlives its last invalidation (must exceed any load's duration)."""
HOLD_SECONDS: Final = 30.0
"""How long a write's hold outlives the writer if it dies before COMMIT's invalidation: longer than any write's
transaction takes from its dispatch to COMMIT (statements are bounded by the database command timeout)."""
MAX_PENDING_INVALIDATIONS: Final = 100_000
TTL_JITTER: Final = 0.1
_SEP: Final = b"|"

_REDIS_ERRORS: Final = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)

_log = get_logger("cowatch.cache")

_STORE: Final = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] or redis.call('ZCOUNT', KEYS[3], ARGV[4], '+inf') > 0 then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
"""KEYS: value, generation, holds; ARGV: blob, TTL in ms, the load's generation, now in ms. Atomic, so a store
never lands under a generation a hold has begun to replace."""


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How values of one kind become JSON and back. ``name`` labels the metrics (``cache="event"``).

    ``binary``: ``encode`` returns the stored bytes and ``decode`` takes them, no JSON in between — for values
    that are mostly bytes already (a serialized message answered as is)."""

    name: str
    encode: Callable[[T], Any]
    decode: Callable[[Any], T]
    binary: bool = False


class Cache(Protocol):
    """The port the services use; :class:`RedisCache` in production, :class:`NullCache` without Redis."""

    async def get_or_load(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        codec: Codec[T],
        *,
        ttl: float,
        scope: str | None = None,
        bypass: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        """The cached value of ``key``, else ``await loader()`` (stored for ``ttl`` seconds). A loader's
        exception propagates and nothing is stored.

        ``bypass`` (default: ``loader``) answers instead when the value will not be stored (no Redis, or Redis
        bypassed): it may read a lagging replica, since what it returns outlives no request. ``loader`` fills the
        cache and must read the primary: a fill from a replica that has not replayed a write yet would store,
        under the generation that write's invalidation just began, the value it replaced."""
        ...

    async def hold(self, *scopes: str) -> None:
        """A write about to COMMIT changes ``scopes``: make their entries stale and store no load of them until
        :meth:`invalidate` or :meth:`release` (or ``HOLD_SECONDS``, if this process dies first). Never raises."""
        ...

    async def invalidate(self, *scopes: str) -> None:
        """Make every entry of ``scopes`` stale, ending this process's hold on them. Call after the write's
        transaction committed. Never raises."""
        ...

    async def release(self, *scopes: str) -> None:
        """The write that held ``scopes`` rolled back: end the hold. Never raises."""
        ...

    async def aclose(self) -> None: ...


class NullCache:
    """No Redis configured: every read is a load."""

    async def get_or_load(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        codec: Codec[T],
        *,
        ttl: float,
        scope: str | None = None,
        bypass: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        return await (bypass or loader)()

    async def hold(self, *scopes: str) -> None:
        return None

    async def invalidate(self, *scopes: str) -> None:
        return None

    async def release(self, *scopes: str) -> None:
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
        hold_seconds: float = HOLD_SECONDS,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self._redis = client
        self._hold_seconds = hold_seconds
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
        self._holds: dict[str, list[bytes]] = {}  # this process's live hold tokens, per scope
        self._stale_holds: set[tuple[str, bytes]] = set()  # holds to remove once Redis answers again
        self._store_script = client.register_script(_STORE)
        self._background: set[asyncio.Task[None]] = set()

    # --- keys ------------------------------------------------------------------------------------------------

    def _value_key(self, key: str, scope: str) -> str:
        return f"{self._prefix}{{{scope}}}" if key == scope else f"{self._prefix}{{{scope}}}:{key}"

    def _generation_key(self, scope: str) -> str:
        return f"{self._prefix}{{{scope}}}:gen"

    def _hold_key(self, scope: str) -> str:
        return f"{self._prefix}{{{scope}}}:hold"

    # --- reads -----------------------------------------------------------------------------------------------

    async def get_or_load(
        self,
        key: str,
        loader: Callable[[], Awaitable[T]],
        codec: Codec[T],
        *,
        ttl: float,
        scope: str | None = None,
        bypass: Callable[[], Awaitable[T]] | None = None,
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
        # Without a generation nothing is stored, and only readers that bypass too join the flight: ``bypass``.
        chosen = loader if generation is not None or bypass is None else bypass
        return await self._load(scope, value_key, generation, chosen, codec, ttl)

    def _decode(self, raw: bytes, value_key: str, generation: bytes, codec: Codec[T]) -> tuple[T] | None:
        stored_generation, _, rest = raw.partition(_SEP)
        stored_key, _, payload = rest.partition(_SEP)
        if stored_generation != generation or stored_key != value_key.encode():
            return None
        try:
            return (codec.decode(payload if codec.binary else json.loads(payload)),)
        except Exception:  # a value written by an incompatible version: treat as a miss, it gets overwritten
            _log.warning("undecodable cache entry", key=value_key, exc_info=True)
            return None

    async def _load(
        self,
        scope: str,
        value_key: str,
        generation: bytes | None,
        loader: Callable[[], Awaitable[T]],
        codec: Codec[T],
        ttl: float,
    ) -> T:
        flight = self._flights.get(value_key)
        if flight is None or not flight.joinable(generation, self._epoch):
            flight = self._flights[value_key] = _Flight(generation, self._epoch)
            flight.task = asyncio.get_running_loop().create_task(
                self._run_load(scope, value_key, flight, loader, codec, ttl)
            )
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
        self,
        scope: str,
        value_key: str,
        flight: _Flight,
        loader: Callable[[], Awaitable[T]],
        codec: Codec[T],
        ttl: float,
    ) -> T:
        value = await loader()
        if flight.generation is not None and self.breaker.closed:
            if codec.binary:
                payload = codec.encode(value)
            else:
                payload = json.dumps(codec.encode(value), separators=(",", ":"), ensure_ascii=False).encode()
            blob = _SEP.join((flight.generation, value_key.encode(), payload))
            # Until the value is in Redis, readers that miss join this finished flight instead of loading again.
            flight.storing = True
            store = self._store(scope, value_key, flight.generation, blob, ttl)
            self._spawn(store, lambda: self._end_flight(value_key, flight))
        return value

    async def _store(self, scope: str, value_key: str, generation: bytes, blob: bytes, ttl: float) -> None:
        """Store the value unless its generation is no longer the scope's or a write holds the scope."""
        ttl_ms = max(1, int(ttl * 1000 * random.uniform(1 - TTL_JITTER, 1 + TTL_JITTER)))
        keys = [value_key, self._generation_key(scope), self._hold_key(scope)]
        try:
            async with asyncio.timeout(self._timeout):
                await self._store_script(keys=keys, args=[blob, ttl_ms, generation, _now_ms()])
        except _REDIS_ERRORS as exc:
            self._redis_failed("set", exc)
        else:
            self.breaker.success()

    # --- invalidation ----------------------------------------------------------------------------------------

    async def hold(self, *scopes: str) -> None:
        await self._invalidate(scopes, "hold")

    async def invalidate(self, *scopes: str) -> None:
        await self._invalidate(scopes, "invalidate")

    async def release(self, *scopes: str) -> None:
        await self._invalidate(scopes, "release")

    async def _invalidate(self, scopes: Iterable[str], operation: str) -> None:
        scopes = tuple(dict.fromkeys(scopes))
        if operation != "release":
            self._epoch += 1
        if not scopes:
            return
        tokens = [secrets.token_bytes(12) for _ in scopes] if operation == "hold" else []
        holds = list(zip(scopes, tokens, strict=True)) if operation == "hold" else self._end_holds(scopes)
        if not self.breaker.allow():
            if operation != "release":
                self._remember(scopes)
            self._forget_holds(holds if operation != "hold" else [])  # a hold not taken costs nothing
            return
        try:
            async with asyncio.timeout(self._timeout):
                if operation == "hold":
                    await self._hold(holds)
                else:
                    await self._bump(scopes if operation == "invalidate" else (), holds)
        except _REDIS_ERRORS as exc:
            self._redis_failed(operation, exc)
            # A hold that may have been taken, or one not ended: the probe removes it (else it would keep the
            # scope uncached until it expires).
            self._forget_holds(holds)
            if operation != "release":
                self._remember(scopes)
                # Redis may still hold what this write made stale: stop reading it until the probe replayed this.
                self.breaker.trip()
        else:
            self.breaker.success()
            if operation == "hold":
                for scope, token in holds:
                    self._holds.setdefault(scope, []).append(token)

    def _forget_holds(self, holds: Iterable[tuple[str, bytes]]) -> None:
        if len(self._stale_holds) < MAX_PENDING_INVALIDATIONS:  # else they simply expire
            self._stale_holds.update(holds)

    def _end_holds(self, scopes: Iterable[str]) -> list[tuple[str, bytes]]:
        """Take one of this process's hold tokens off each scope that has one (the oldest: holds end in order)."""
        ended = []
        for scope in scopes:
            tokens = self._holds.get(scope)
            if tokens:
                ended.append((scope, tokens.pop(0)))
                if not tokens:
                    del self._holds[scope]
        return ended

    async def _hold(self, holds: Sequence[tuple[str, bytes]]) -> None:
        now, hold_ms = _now_ms(), max(1, int(self._hold_seconds * 1000))
        pipe = self._redis.pipeline(transaction=False)
        for scope, token in holds:
            hold_key = self._hold_key(scope)
            # The hold first: a reader that sees the new generation also sees the hold (one connection, in order).
            pipe.zremrangebyscore(hold_key, "-inf", now)  # expired holds: writers that died
            pipe.zadd(hold_key, {token: now + hold_ms})
            pipe.pexpire(hold_key, hold_ms)  # the set lives as long as its newest hold
        await self._bump([scope for scope, _ in holds], pipe=pipe)

    async def _bump(
        self, scopes: Iterable[str], ended: Iterable[tuple[str, bytes]] = (), *, pipe: Pipeline | None = None
    ) -> None:
        pipe = pipe or self._redis.pipeline(transaction=False)
        for scope in scopes:
            generation_key = self._generation_key(scope)
            pipe.incr(generation_key)
            pipe.expire(generation_key, GENERATION_TTL_SECONDS)
            pipe.unlink(self._value_key(scope, scope))
        for scope, token in ended:
            pipe.zrem(self._hold_key(scope), token)
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
        """Redis answers again: replay the invalidations it missed (and remove the holds that could not be ended),
        then the breaker closes."""
        async with asyncio.timeout(self._timeout):
            await self._redis.ping()
        while self._pending or self._stale_holds:
            batch = [self._pending.pop() for _ in range(min(1000, len(self._pending)))]
            holds = [self._stale_holds.pop() for _ in range(min(1000, len(self._stale_holds)))]
            try:
                async with asyncio.timeout(max(self._timeout, 1.0)):
                    await self._bump(batch, holds)
            except BaseException:
                self._pending.update(batch)
                self._stale_holds.update(holds)
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


def _now_ms() -> int:
    """Hold expiry times are wall-clock milliseconds of the writing process (replicas' clocks agree to far better
    than ``HOLD_SECONDS``)."""
    return int(time.time() * 1000)


def invalidation(
    cache: Cache, event_type: type[E], scopes_of: Callable[[Conn, E], Awaitable[Iterable[str]]]
) -> Handlers:
    """The dispatcher's handlers that make ``scopes_of(conn, event)`` stale for every ``event_type``: computed
    and held in the transaction (``scopes_of`` may query through ``conn``), invalidated after COMMIT, released
    after a rollback."""
    held: dict[int, tuple[str, ...]] = {}  # by the event object's identity: it lives until its transaction ends

    async def before_commit(conn: Conn, event: E, trace_id: str) -> None:
        scopes = held[id(event)] = tuple(await scopes_of(conn, event))
        await cache.hold(*scopes)

    async def after_commit(event: E) -> None:
        await cache.invalidate(*held.pop(id(event), ()))

    async def after_rollback(event: E) -> None:
        await cache.release(*held.pop(id(event), ()))

    return Handlers().on(
        event_type, in_transaction=before_commit, after_commit=after_commit, after_rollback=after_rollback
    )


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
