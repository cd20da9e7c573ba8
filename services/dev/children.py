"""``make run``'s child processes: spawning, output pumps, signals, and restarting a child that died (with back-off).

Every child runs in its own session (a terminal's Ctrl-C reaches only the launcher, which stops the children in
order) with a parent-death signal (nothing outlives a killed launcher). Its output goes to the console, prefixed
with its name, and to ``<log_dir>/<name>.log``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from services.dev.console import Console
from services.dev.processes import pdeathsig_argv


@dataclass
class Backoff:
    """Restart delays: ``first``, doubling up to ``cap``; a process that ran ``stable_after`` seconds before
    dying starts again from ``first`` (it crashed once, it is not crash-looping)."""

    first: float = 1.0
    cap: float = 30.0
    stable_after: float = 30.0
    _next: float = 0.0

    def delay(self, ran_for: float) -> float:
        if ran_for >= self.stable_after or self._next == 0.0:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay


@dataclass
class Child:
    """One process of the stack."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_dir: Path
    health_port: int | None = None
    health_service: str = ""
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    backoff: Backoff = field(default_factory=Backoff)
    restarts: int = 0
    restart_at: float | None = None
    """When a dead child is due to start again (monotonic), None when it is not waiting for a restart."""
    started_at: float = 0.0
    _pump: threading.Thread | None = None
    _log: IO[str] | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self, console: Console) -> None:
        """Spawn the process and copy its output to the console and its log file (a thread per child). A restart
        appends to the log of the earlier runs."""
        self.proc = subprocess.Popen(
            [*pdeathsig_argv(signal.SIGTERM), *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        mode = "a" if self.restarts else "w"
        self._log = open(self.log_path, mode, encoding="utf-8", errors="replace")  # noqa: SIM115
        stdout, log = self.proc.stdout, self._log
        assert stdout is not None

        def pump() -> None:
            for raw in iter(stdout.readline, b""):
                text = raw.decode(errors="replace").rstrip("\r\n")
                self.tail.append(text)
                with contextlib.suppress(ValueError, OSError):
                    log.write(text + "\n")
                    log.flush()
                console.line(self.name, text)

        self._pump = threading.Thread(target=pump, name=f"pump-{self.name}", daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)  # the child's own session: also reaches anything it started

    def schedule_restart(self, now: float) -> float:
        """After an unexpected exit: drain its output, pick the back-off delay; returns the delay."""
        self.finish()
        delay = self.backoff.delay(now - self.started_at)
        self.restart_at = now + delay
        return delay

    def restart_if_due(self, now: float, console: Console) -> bool:
        if self.restart_at is None or now < self.restart_at:
            return False
        self.restart_at = None
        self.restarts += 1
        self.start(console)
        return True

    def finish(self) -> None:
        """After exit: let the pump drain the pipe, close the log."""
        if self._pump is not None:
            self._pump.join(timeout=2)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def log_tail(self, lines: int = 30) -> str:
        if self._pump is not None and not self.running:
            self._pump.join(timeout=1)
        tail = list(self.tail)[-lines:]
        return "\n".join(tail) if tail else "(no output)"


def wait_all(children: Iterable[Child], timeout: float, *, abort: Callable[[], bool] = lambda: False) -> list[Child]:
    """Wait until every child exited or ``timeout`` passed (or ``abort()``); returns those still running."""
    deadline = time.monotonic() + timeout
    pending = [c for c in children if c.running]
    while pending and time.monotonic() < deadline and not abort():
        time.sleep(0.05)
        pending = [c for c in pending if c.running]
    return pending
