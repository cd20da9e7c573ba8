"""The circuit breaker: opens on consecutive failures, refuses instantly while open, closes again by itself."""

from __future__ import annotations

import asyncio

from services.common.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_opens_after_consecutive_failures_only():
    breaker = CircuitBreaker("dep", failure_threshold=3, reset_timeout=1.0, clock=Clock())
    breaker.failure()
    breaker.failure()
    breaker.success()  # not consecutive any more
    breaker.failure()
    breaker.failure()
    assert breaker.closed and breaker.allow()
    breaker.failure()
    assert not breaker.closed
    assert not breaker.allow()


async def test_without_probe_one_trial_call_after_the_reset_timeout():
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(
        "dep", failure_threshold=1, reset_timeout=5.0, clock=clock, on_change=lambda _n, s: changes.append(s)
    )
    breaker.failure()
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.allow()  # the trial call
    assert not breaker.allow()  # everyone else waits for its outcome
    breaker.failure()
    assert not breaker.allow()
    clock.now += 5.1
    assert breaker.allow()
    breaker.success()
    assert breaker.closed and breaker.allow()
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


async def test_with_a_probe_it_closes_by_itself_and_callers_never_pay_for_failed_probes():
    healthy = asyncio.Event()
    probes = 0

    async def probe() -> None:
        nonlocal probes
        probes += 1
        if not healthy.is_set():
            raise ConnectionError("still down")

    breaker = CircuitBreaker("dep", failure_threshold=2, reset_timeout=0.02, probe=probe)
    breaker.failure()
    breaker.failure()
    assert not breaker.closed
    await asyncio.sleep(0.1)
    assert probes >= 2  # probing in the background
    assert not breaker.allow()  # and no caller is let through meanwhile
    breaker.success()  # a late success of a call started before opening proves nothing
    assert not breaker.closed
    closed = asyncio.Event()
    breaker._on_change = lambda _name, state: closed.set() if state is BreakerState.CLOSED else None
    healthy.set()
    async with asyncio.timeout(1):
        await closed.wait()
    assert breaker.allow()
    await breaker.aclose()


async def test_aclose_stops_the_probe():
    async def probe() -> None:
        raise ConnectionError

    breaker = CircuitBreaker("dep", failure_threshold=1, reset_timeout=0.01, probe=probe)
    breaker.trip()
    await asyncio.sleep(0.03)
    await breaker.aclose()
    assert breaker.state is not BreakerState.CLOSED
