"""``make run`` (python -m services.dev.run) restarts a child that dies and says so on its console.

The whole stack runs for real — the three services, the worker, the notification stand-in and Envoy — on free
ports, over a fresh database on the suite's PostgreSQL. A service is killed with SIGKILL; it must come back
SERVING on the same port (also through Envoy), and Ctrl-C must then stop everything, leaving no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.dev.migrate import drop_database
from services.dev.processes import free_port, pid_alive
from services.dev.run import DEFAULT_PORTS, READY_MARKER
from tests.support.db import create_migrated_database

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOKING_SERVICE = "cowatch.booking.v1.BookingService"


class Launcher:
    """``python -m services.dev.run`` with its console collected line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.dev.run"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        """The first console line from index ``start`` on matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no console line matching {pattern!r}:\n{self.output()}")
                self._cond.wait(min(left, 0.5))

    def output(self, last: int = 80) -> str:
        return "\n".join(self.lines[-last:])


def serving(port: int, service: str) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest_asyncio.fixture(loop_scope="session")
async def dev_database(pg_server_url: str) -> AsyncIterator[str]:
    name, url = await create_migrated_database(pg_server_url)
    try:
        yield url
    finally:
        await drop_database(pg_server_url, name)


def test_a_killed_service_is_restarted_with_a_console_line_and_ctrl_c_stops_all(
    dev_database: str, tmp_path: Path
) -> None:
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(DEFAULT_PORTS):
        ports = {role: free_port() for role in DEFAULT_PORTS}
    env = {k: v for k, v in os.environ.items() if not k.startswith("COWATCH_")}
    env.update({f"COWATCH_DEV_{role.upper()}_PORT": str(port) for role, port in ports.items()})
    env.update(DATABASE_URL=dev_database, COWATCH_DEV_PGDATA=str(tmp_path / "unused"), NO_COLOR="1")
    env.pop("REDIS_URL", None)
    launcher = Launcher(env)
    try:
        launcher.wait_for(re.escape(READY_MARKER), timeout=180)
        started = launcher.wait_for(r"started .*\bbooking \(pid (\d+)\)", timeout=1)
        booking_pid = int(started.group(1))
        assert serving(ports["booking"], BOOKING_SERVICE)

        os.kill(booking_pid, signal.SIGKILL)
        mark = len(launcher.lines)
        launcher.wait_for(r"booking \(pid \d+\) exited unexpectedly with code -9; restarting it in \d+s", 30, mark)
        restarted = launcher.wait_for(r"booking: restarted \(pid (\d+), restart #1\)", 30, mark)
        new_pid = int(restarted.group(1))
        assert new_pid != booking_pid
        deadline = time.monotonic() + 60
        while not serving(ports["booking"], BOOKING_SERVICE):
            assert time.monotonic() < deadline, launcher.output()
            time.sleep(0.2)
        assert launcher.proc.poll() is None, "the launcher stopped the stack instead of restarting the child"
        # Envoy routes to it again: /healthz answers 200 only while every cluster has a healthy host.
        while not http_ok(f"http://127.0.0.1:{ports['http']}/healthz"):
            assert time.monotonic() < deadline, launcher.output()
            time.sleep(0.2)
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", "\n".join(launcher.lines))]

        launcher.proc.send_signal(signal.SIGINT)
        assert launcher.proc.wait(90) == 0, launcher.output()
        deadline = time.monotonic() + 10
        while (left := [p for p in pids if pid_alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"still running after Ctrl-C: {left}"
    finally:
        if launcher.proc.poll() is None:
            os.killpg(launcher.proc.pid, signal.SIGKILL)
            launcher.proc.wait(10)
