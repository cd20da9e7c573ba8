"""A small circuit breaker for an optional dependency (the Redis cache).

Written here rather than taken from PyPI: purgatory, the maintained asyncio breaker, lets every concurrent call
through while half-open and runs an async message bus per call; this one decides with a synchronous check on the
hot path and recovers with a single background probe, so no request ever waits on a dependency known to be down.

States:

- **closed**: calls go through; ``failure_threshold`` consecutive failures open the breaker.
- **open**: :meth:`allow` says no, instantly. With a ``probe`` the breaker runs it every ``reset_timeout``
  seconds in the background and closes once it succeeds; no caller ever pays for a failed probe.
  Without one, after ``reset_timeout`` the next caller becomes the trial call (**half-open**).
- **half-open**: one trial in flight, everyone else is refused; its success closes, its failure re-opens.

Use::

    if breaker.allow():
        try:
            result = await call()
        except Exception:
            breaker.failure()
        else:
            breaker.success()
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from enum import IntEnum

from services.common.logging import get_logger

__all__ = ["BreakerState", "CircuitBreaker"]

_log = get_logger("cowatch.breaker")


class BreakerState(IntEnum):
    """Also the value of the ``cowatch_circuit_breaker_state`` gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 2.0,
        probe: Callable[[], Awaitable[object]] | None = None,
        on_change: Callable[[str, BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.name = name
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._probe = probe
        self._on_change = on_change
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_task: asyncio.Task[None] | None = None

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is BreakerState.CLOSED

    def allow(self) -> bool:
        """May a call go to the dependency now? Cheap and synchronous."""
        if self._state is BreakerState.CLOSED:
            return True
        if (
            self._state is BreakerState.OPEN
            and self._probe is None
            and self._clock() - self._opened_at >= self._reset_timeout
        ):
            self._set(BreakerState.HALF_OPEN)  # this caller is the trial call
            return True
        return False

    def success(self) -> None:
        if self._state is BreakerState.HALF_OPEN and self._probe is None:
            self._close()
        elif self._state is BreakerState.CLOSED:
            self._failures = 0
        # OPEN: a call that started before the breaker opened proves little; the probe decides.

    def failure(self) -> None:
        if self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open()
        elif self._state is BreakerState.HALF_OPEN and self._probe is None:
            self._open()

    def trip(self) -> None:
        """Open now (e.g. the dependency told us it is going away)."""
        if self._state is not BreakerState.OPEN:
            self._open()

    async def aclose(self) -> None:
        """Stop the background probe (at process stop)."""
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- transitions -----------------------------------------------------------------------------------------

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._set(BreakerState.OPEN)
        if self._probe is not None and self._probe_task is None:
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_until_healthy(), name=self.name)

    def _close(self) -> None:
        self._failures = 0
        self._set(BreakerState.CLOSED)

    def _set(self, state: BreakerState) -> None:
        if state is self._state:
            return
        self._state = state
        log = _log.info if state is BreakerState.CLOSED else _log.warning
        log("circuit breaker " + state.name.lower().replace("_", "-"), breaker=self.name)
        if self._on_change is not None:
            self._on_change(self.name, state)

    async def _probe_until_healthy(self) -> None:
        assert self._probe is not None
        try:
            while True:
                await asyncio.sleep(self._reset_timeout)
                self._set(BreakerState.HALF_OPEN)
                try:
                    await self._probe()
                except Exception as exc:
                    _log.debug("breaker probe failed", breaker=self.name, error=type(exc).__name__)
                    self._opened_at = self._clock()
                    self._set(BreakerState.OPEN)
                    continue
                self._close()
                return
        finally:
            if self._probe_task is asyncio.current_task():
                self._probe_task = None
