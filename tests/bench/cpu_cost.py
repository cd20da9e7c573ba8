"""CPU cost per operation, for docs/capacity.md: CPU-milliseconds one CreateBooking, one GetEvent and one
ListEvents page take in the service process and in PostgreSQL, and the service's resident memory under that load.

CPU time, not throughput: on a shared box other work steals wall-clock time but not the CPU time an operation
consumes, so these figures hold where ``make bench``'s rates move ±30 % (capacity = cores ÷ CPU per operation).
The service's cost is read from /proc/<pid>/stat; PostgreSQL's from its backends serving this run's database
(pg_stat_activity), so it needs the server on this machine (embedded, or DATABASE_URL naming a local one).

    .venv/bin/python -m tests.bench.cpu_cost            # about a minute; prints one table
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from cowatch.booking.v1 import resources_pb2, service_pb2, service_pb2_grpc
from cowatch.event.v1 import service_pb2 as event_pb2
from cowatch.event.v1 import service_pb2_grpc as event_grpc

from services.dev.migrate import drop_database
from tests.bench.__main__ import RESULTS_DIR, postgres_server
from tests.bench.harness import BenchContext, channels, closed_loop, seed_events
from tests.support.db import create_migrated_database

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
OPS = int(os.environ.get("COST_OPS", "3000"))
CONCURRENCY = 16


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (0 for a process gone: a backend that exited mid-run)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115 - /proc read
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return int(fields[21]) * PAGE / 2**20


async def backends(admin: asyncpg.Connection, database: str) -> list[int]:
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    return [r["pid"] for r in rows]


async def measure(
    label: str, service_pid: int, admin: asyncpg.Connection, database: str, op: Callable[[int], Awaitable[Any]]
) -> tuple[str, float, float, float, float]:
    # warm-up (connections, prepared statements) on indexes of its own: each index is a fresh guest
    await closed_loop(lambda i: op(OPS + i), concurrency=CONCURRENCY, seconds=1.0)
    pids = await backends(admin, database)
    svc0, pg0 = cpu_seconds(service_pid), sum(cpu_seconds(p) for p in pids)
    done = 0

    async def counted(i: int) -> None:
        nonlocal done
        await op(i)
        done += 1

    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await counted(i)

    results = await asyncio.gather(*(one(i) for i in range(OPS)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"{label}: {len(errors)} errors, first: {errors[0]!r}")
    svc1 = cpu_seconds(service_pid)
    pg1 = sum(cpu_seconds(p) for p in pids)
    return label, 1000 * (svc1 - svc0) / done, 1000 * (pg1 - pg0) / done, rss_mib(service_pid), done


async def main() -> None:
    rows = []
    with postgres_server() as (server_url, description):
        database, url = await create_migrated_database(server_url, f"cowatch_cost_{os.urandom(3).hex()}")
        ctx = BenchContext(database_url=url, quick=False, results_dir=RESULTS_DIR, pg_description=description)
        admin = await asyncpg.connect(server_url)
        rng = random.Random(7)
        try:
            async with ctx.pool(4) as pool:
                events = await seed_events(pool, 2000, capacity=1000, host_prefix="cost-host")
            names = [f"events/{e}" for e in events]
            async with ctx.service(
                "services.booking", db_pool_max_size=10, max_concurrent_rpcs=4096, db_acquire_timeout_seconds=30
            ) as svc:
                stubs = [service_pb2_grpc.BookingServiceStub(c) for c in channels(svc.address, 4)]

                async def book(i: int) -> None:
                    request = service_pb2.CreateBookingRequest(
                        booking=resources_pb2.Booking(event=names[rng.randrange(len(names))], seats=1),
                        request_id=str(uuid.uuid4()),
                    )
                    await stubs[i % 4].CreateBooking(request, metadata=ctx.metadata(f"cost-guest-{i}"), timeout=30)

                rows.append(await measure("CreateBooking", svc.proc.pid, admin, database, book))
            async with ctx.service(
                "services.event", db_pool_max_size=10, max_concurrent_rpcs=4096, db_acquire_timeout_seconds=30
            ) as svc:
                estubs = [event_grpc.EventServiceStub(c) for c in channels(svc.address, 4)]
                gets = [event_pb2.GetEventRequest(name=n) for n in names]
                listing = event_pb2.ListEventsRequest(city="Berlin", page_size=20)

                async def get(i: int) -> None:
                    await estubs[i % 4].GetEvent(gets[i % len(gets)], timeout=30)

                async def page(i: int) -> None:
                    await estubs[i % 4].ListEvents(listing, timeout=30)

                rows.append(await measure("GetEvent (uncached)", svc.proc.pid, admin, database, get))
                rows.append(await measure("ListEvents (20, uncached)", svc.proc.pid, admin, database, page))
        finally:
            await admin.close()
            await drop_database(server_url, database)
    print(f"{OPS} operations each, {CONCURRENCY} in flight, {os.cpu_count()} CPUs, {description}")
    print("| operation | service CPU ms/op | PostgreSQL CPU ms/op | service RSS MiB after |")
    print("|---|---|---|---|")
    for label, svc_ms, pg_ms, rss, _ in rows:
        print(f"| {label} | {svc_ms:.2f} | {pg_ms:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
