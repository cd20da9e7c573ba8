"""The TypeScript SDK's and the web page's tests: `make run` as a process on free ports, and Node/Chromium.

The stack is the real one a developer gets (``python -m services.dev.run``: services, worker, notification
stand-in, Envoy, the page's static server with dev sign-in) over the suite's database, without Redis (tests move
an event's time in the database and read it back at once).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.dev.processes import free_port
from services.dev.run import DEFAULT_PORTS, DEV_PREFIX, READY_MARKER

REPO_ROOT = Path(__file__).resolve().parents[2]
TS_SDK = REPO_ROOT / "sdk" / "typescript"
WEB = REPO_ROOT / "web"
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def require_node() -> str:
    """The ``node`` binary, or skip the test with one line saying what is missing."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: the TypeScript SDK and web page tests need Node >= 20")
    return node


def require_chromium() -> str:
    """A Chromium for playwright-core (``CHROMIUM`` or on PATH), or skip with one line."""
    found = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if not found:
        pytest.skip("chromium not installed (apt-get install chromium): the browser walk-through needs it")
    return found


def npm_ci(package: Path) -> None:
    """``npm ci`` in ``package`` unless its locked dependencies are installed already."""
    if (package / "node_modules" / ".package-lock.json").is_file():
        return
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=package, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci in {package} failed:\n{result.stdout}\n{result.stderr}")


@dataclass
class DevStack:
    """A running ``make run``: the page and the API on ``url`` (the same origin)."""

    proc: subprocess.Popen[str]
    url: str
    database_url: str
    output: deque[str] = field(default_factory=lambda: deque(maxlen=400))

    def tail(self, lines: int = 80) -> str:
        return "\n".join(list(self.output)[-lines:])


@contextlib.contextmanager
def dev_stack(database_url: str, timeout: float = 120.0) -> Iterator[DevStack]:
    """``python -m services.dev.run`` on free ports over ``database_url``; stopped (SIGTERM, in order) after."""
    ports = {role: free_port() for role in DEFAULT_PORTS if role != "pg"}
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "COWATCH_REDIS_URL", "DATABASE_URL"}}
    env.update({f"{DEV_PREFIX}{role.upper()}_PORT": str(port) for role, port in ports.items()})
    env.update({"COWATCH_DATABASE_URL": database_url, "NO_COLOR": "1", "COWATCH_SHUTDOWN_GRACE_SECONDS": "1"})
    env.pop("COWATCH_PUBLIC_BASE_URL", None)  # make run's default: http://localhost:<port>, the page's origin
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.dev.run", "--start-timeout", str(timeout)],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    stack = DevStack(proc, f"http://localhost:{ports['http']}", database_url)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            stack.output.append(line.rstrip("\n"))
            if READY_MARKER in line:
                ready.set()

    threading.Thread(target=pump, name="make-run-output", daemon=True).start()
    try:
        deadline = time.monotonic() + timeout + 10
        while not ready.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"make run did not get ready (exit {proc.poll()}):\n{stack.tail()}")
        yield stack
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the launcher stops its children in order
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
