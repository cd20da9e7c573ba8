"""A private ``redis-server`` on a free port, for tests that must not touch (or may break) a shared Redis."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from services.dev.processes import HOST, PortInUse, pdeathsig_argv, start_on_free_port
from tests.support import tools


class RedisServerError(RuntimeError):
    pass


class RedisServer:
    """``redis-server`` on ``127.0.0.1:<port>`` with no persistence and its own working directory.

    ``start()``, ``stop()`` (SIGTERM, wait), ``kill()`` (SIGKILL), ``pause()``/``resume()`` (SIGSTOP/SIGCONT),
    ``restart()`` on the same port, ``url``;
    as a context manager it starts and finally removes its directory. The data lives in memory only, so a
    restart comes back empty.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        startup_timeout: float = 15.0,
        die_with_parent: bool = True,
    ):
        found = binary or tools.find("redis-server")
        if found is None:
            raise RedisServerError(tools.missing_line("redis-server"))
        self.binary = found
        self._port = port
        self._dir = Path(tempfile.mkdtemp(prefix="cowatch-redis-"))
        self.log_path = self._dir / "redis.log"
        self._startup_timeout = startup_timeout
        # The server dies with the thread that started it (setpriv --pdeathsig, see pdeathsig_argv).
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("not started yet: no port chosen")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> Self:
        if self.running:
            return self
        try:
            self._port = start_on_free_port(self._spawn_and_wait, self._port)
        except PortInUse:
            raise RedisServerError(f"port {self._port} is in use\n{self.log_tail()}") from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # in case it was paused
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung Redis)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _spawn_and_wait(self, port: int) -> None:
        self._port = port
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the server
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        prefix = pdeathsig_argv(signal.SIGTERM) if self._die_with_parent else []
        self._proc = subprocess.Popen(
            [*prefix, *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._dir,
            start_new_session=True,
        )
        deadline = time.monotonic() + self._startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._reap()
                with open(self.log_path, "rb") as f:
                    f.seek(offset)
                    new = f.read().decode(errors="replace")
                if "Address already in use" in new:
                    raise PortInUse
                raise RedisServerError(f"redis-server exited with code {code}:\n{self.log_tail()}")
            if _ping(self.port):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RedisServerError(f"redis-server not ready after {self._startup_timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.01)

    def _reap(self) -> None:
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


__all__ = ["RedisServer", "RedisServerError"]
