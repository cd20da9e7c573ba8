"""What every benchmark scenario shares: the result row, the run context, load drivers and latency statistics.

A scenario is a module ``tests/bench/scenarios/b<N>_<slug>.py`` exposing ``async def run(ctx: BenchContext) ->
list[Row]``. The runner (``python -m tests.bench``) gives each scenario a fresh migrated database and a
:class:`BenchContext`; the scenario starts what it needs (service processes through :meth:`BenchContext.service`,
asyncpg pools through :meth:`BenchContext.pool`) and returns one :class:`Row` per scenario id.

Measuring rules (docs/benchmarks.md): ``ratio`` is cowatch ÷ a baseline measured in the same run, with the same
concurrency on both sides; throughput comes from closed-loop runs; latency targets are read in open loop at a
fixed offered rate (a fraction of the measured capacity), with latency counted from each request's scheduled
send time so that a stalled client can't hide queueing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.auth import issue_token
from services.dev.migrate import drop_database
from services.dev.processes import free_port
from tests.support import tools
from tests.support.db import create_migrated_database

REPO_ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://auth.bench.cowatch"
AUDIENCE = "cowatch-bench"
HS256_SECRET = "bench-secret-that-is-at-least-32-bytes-long!!"


@dataclass
class Row:
    """One line of the results table (and one object in latest.json)."""

    id: str
    scenario: str
    cowatch: str
    baseline: str
    ratio: float | None
    goal: str
    met: bool | None
    notes: str
    correctness: dict[str, int] = field(default_factory=dict)
    """Counters that must all be 0 (oversold seats, lost/duplicated messages, unexpected errors...)."""
    data: dict[str, Any] = field(default_factory=dict)
    """Raw figures for the JSON file."""

    @property
    def correct(self) -> bool:
        return all(v == 0 for v in self.correctness.values())

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["correct"] = self.correct
        return out


@dataclass(frozen=True)
class Stats:
    count: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def stats(latencies: Sequence[float], seconds: float) -> Stats:
    values = sorted(latencies)
    return Stats(
        count=len(values),
        seconds=seconds,
        p50_ms=percentile(values, 0.50) * 1000,
        p99_ms=percentile(values, 0.99) * 1000,
        max_ms=(values[-1] * 1000) if values else float("nan"),
    )


Op = Callable[[int], Awaitable[Any]]
"""One unit of work; gets a sequence number; raises on failure."""


@dataclass
class LoadResult:
    stats: Stats
    errors: dict[str, int]
    results: list[Any]
    latencies: list[float] = field(default_factory=list)
    """Seconds per successful op, in the order of ``results`` (the two are appended together)."""


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return type(exc).__name__


async def closed_loop(op: Op, *, concurrency: int, seconds: float, start_index: int = 0) -> LoadResult:
    """``concurrency`` workers call ``op`` back to back for ``seconds``; throughput and (closed-loop) latency."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    results: list[Any] = []
    counter = start_index
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal counter
        while time.perf_counter() < deadline:
            i = counter
            counter += 1
            t0 = time.perf_counter()
            try:
                results.append(await op(i))
            except Exception as exc:
                errors[_error_name(exc)] = errors.get(_error_name(exc), 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(stats(latencies, time.perf_counter() - started), errors, results, latencies)


async def open_loop(
    op: Op, *, rate: float, seconds: float, start_index: int = 0, max_in_flight: int = 4096
) -> LoadResult:
    """Send at a fixed ``rate`` per second for ``seconds`` whatever the answers' speed; latency from the scheduled
    send time."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    results: list[Any] = []
    total = max(1, int(rate * seconds))
    interval = 1.0 / rate
    in_flight = asyncio.Semaphore(max_in_flight)

    async def one(i: int, scheduled: float) -> None:
        try:
            results.append(await op(start_index + i))
        except Exception as exc:
            errors[_error_name(exc)] = errors.get(_error_name(exc), 0) + 1
            return
        finally:
            in_flight.release()
        latencies.append(time.perf_counter() - scheduled)

    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    for i in range(total):
        scheduled = started + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await in_flight.acquire()
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    return LoadResult(stats(latencies, time.perf_counter() - started), errors, results, latencies)


# ---------------------------------------------------------------------------------------------- services


_NOT_INHERITED = frozenset({"DATABASE_URL", "COWATCH_DATABASE_URL", "REDIS_URL", "COWATCH_REDIS_URL"})


class ServiceProcess:
    """A cowatch service run as its own process (``python -m services.<name>``), as in production."""

    def __init__(self, module: str, env: Mapping[str, str], port: int, log_path: Path) -> None:
        self.module = module
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
        # Nothing shared leaks in from our own environment: a service talks to the run's database, and to a Redis
        # only if the scenario passes one (never to a shared Redis named by REDIS_URL).
        inherited = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env={**inherited, **env},
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def wait_serving(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # (the typing stubs lack the async variant)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.module} exited with {self.proc.returncode}; see {self.log_path}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.module} not SERVING after {within:.0f}s; see {self.log_path}")
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class ScenarioSkipped(Exception):
    """The scenario cannot run on this machine (a program it needs is missing); the message is the one line
    saying what to install. The runner prints a SKIPPED row for it and still exits 0."""


def need_tool(name: str, needed_for: str) -> str:
    """The path of ``name`` (tests/support/tools.py), or :class:`ScenarioSkipped` with what to install."""
    found = tools.find(name)
    if found is None:
        raise ScenarioSkipped(tools.missing_line(name, needed_for))
    return found


DurableServer = Callable[[], Awaitable[tuple[str, str]]]
"""Gives (server URL, description) of a PostgreSQL server with durable commits, starting it on first use."""


@dataclass
class BenchContext:
    """Everything a scenario may use. ``database_url`` is a fresh, migrated database of its own."""

    database_url: str
    quick: bool
    results_dir: Path
    pg_description: str
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr, flush=True))
    durable_server: DurableServer | None = None

    @contextlib.asynccontextmanager
    async def durable(self) -> AsyncIterator[BenchContext]:
        """This context on a fresh migrated database of the run's durable server (``fsync`` and
        ``synchronous_commit`` on, as in production), dropped afterwards: a scenario measures its durable row
        with it exactly as its main row."""
        if self.durable_server is None:
            raise RuntimeError("this run has no durable PostgreSQL server")
        server_url, description = await self.durable_server()
        name, url = await create_migrated_database(server_url, f"cowatch_bench_durable_{os.urandom(3).hex()}")
        try:
            yield dataclasses.replace(self, database_url=url, pg_description=description, durable_server=None)
        finally:
            await drop_database(server_url, name)

    def seconds(self, full: float, quick: float = 0.5) -> float:
        """A measurement window: ``full`` normally, ``quick`` in QUICK mode."""
        return quick if self.quick else full

    def token(self, user_id: str, name: str = "Bench User") -> str:
        return issue_token(
            subject=user_id, issuer=ISSUER, audience=AUDIENCE, key=HS256_SECRET, name=name, expires_in=3600 * 6
        )

    def metadata(self, user_id: str, name: str = "Bench User") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(user_id, name)}"),)

    def service_env(self, **settings: object) -> dict[str, str]:
        """COWATCH_* environment for a service process on this run's database; ``settings`` override."""
        env = {
            "COWATCH_DATABASE_URL": self.database_url,
            "COWATCH_JWT_ISSUER": ISSUER,
            "COWATCH_JWT_AUDIENCE": AUDIENCE,
            "COWATCH_JWT_HS256_SECRET": HS256_SECRET,
            "COWATCH_GRPC_HOST": "127.0.0.1",
            "COWATCH_PUBLIC_BASE_URL": "https://cowatch.bench",
        }
        for key, value in settings.items():
            env[f"COWATCH_{key.upper()}"] = str(value)
        return env

    @contextlib.asynccontextmanager
    async def service(self, module: str, **settings: object) -> AsyncIterator[ServiceProcess]:
        """Start ``python -m <module>`` on a free port with ``settings`` (COWATCH_* names, lower-case), wait until
        it is SERVING; SIGTERM it at the end."""
        port = free_port()
        env = self.service_env(grpc_port=port, **settings)
        process = ServiceProcess(module, env, port, self.results_dir / f"{module.rsplit('.', 1)[-1]}-{port}.log")
        try:
            await process.wait_serving()
            yield process
        finally:
            process.stop()

    @contextlib.asynccontextmanager
    async def pool(self, size: int) -> AsyncIterator[asyncpg.Pool]:
        """A plain asyncpg pool of ``size`` connections on this run's database (for baselines)."""
        pool = await asyncpg.create_pool(self.database_url, min_size=size, max_size=size)
        try:
            yield pool
        finally:
            await pool.close()


def channels(address: str, count: int) -> list[grpc.aio.Channel]:
    """``count`` channels on separate HTTP/2 connections (a local subchannel pool each)."""
    return [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


def fmt_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}"


def fmt_ms(value: float) -> str:
    return f"{value:.1f} ms" if value >= 1 else f"{value:.2f} ms"


async def seed_events(pool: asyncpg.Pool, count: int, *, capacity: int, host_prefix: str) -> list[uuid.UUID]:
    """``count`` scheduled public events of one new host, start times 3 h apart (no two overlap), a month ahead."""
    host = f"{host_prefix}-{uuid.uuid4().hex[:8]}"
    first = datetime.now(UTC) + timedelta(days=30)
    ids = [uuid.uuid4() for _ in range(count)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO account.users (id, display_name) VALUES ($1, 'Bench Host')", host)
        await conn.copy_records_to_table(
            "events",
            schema_name="event",
            columns=[
                "id", "host_id", "film_id", "film_title", "title", "start_time", "end_time", "time_zone",
                "place_name", "place_address", "place_city", "capacity", "visibility", "invite_token",
            ],
            records=[
                (
                    event_id, host, "tt0069293", "Solaris", f"Solaris night {n}",
                    first + timedelta(hours=3 * n), first + timedelta(hours=3 * n + 2), "Europe/Berlin",
                    "Anna's living room", "Torstr. 1, 10119", "Berlin", capacity, "PUBLIC", "t" * 32,
                )
                for n, event_id in enumerate(ids)
            ],
        )  # fmt: skip
    return ids
