"""An embedded PostgreSQL controlled from a helper process, for fault tests that stop and restart it under load.

Why a helper: starting PostgreSQL forks (as root, with a change of user), and forking a process whose gRPC threads
are busy crashes the child now and then (gRPC's fork handlers are skipped while "other threads are calling into
gRPC"). The helper has no gRPC: it owns the :class:`~services.dev.embedded_pg.EmbeddedPostgres` and obeys one-word
commands on stdin; it and the server die with the test (end of stdin).

    with RemotePostgres() as pg:
        url = pg.url
        pg.stop()
        pg.start()
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from services.dev.embedded_pg import EmbeddedPostgres

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("start", "stop", "kill", "pause", "resume")


class RemotePostgres:
    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.pg_process"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        reply = self._read()
        self.url = str(reply["url"])
        self.port = int(str(reply["port"]))

    def _read(self) -> dict[str, object]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"postgres helper exited ({self._proc.wait()})")
        reply: dict[str, object] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"postgres helper: {reply['error']}")
        return reply

    def _command(self, command: str) -> None:
        stdin: IO[str] | None = self._proc.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()
        self._read()

    def start(self) -> None:
        self._command("start")

    def stop(self) -> None:
        self._command("stop")

    def kill(self) -> None:
        self._command("kill")

    def pause(self) -> None:
        self._command("pause")

    def resume(self) -> None:
        self._command("resume")

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _serve() -> None:
    with EmbeddedPostgres() as pg:
        print(json.dumps({"url": pg.url, "port": pg.port}), flush=True)
        for line in sys.stdin:
            command = line.strip()
            try:
                if command not in COMMANDS:
                    raise ValueError(f"unknown command {command!r}")
                getattr(pg, command)()
            except Exception as exc:
                print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
            else:
                print(json.dumps({"ok": command}), flush=True)


if __name__ == "__main__":
    _serve()
