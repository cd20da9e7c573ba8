"""Child-process helpers shared by ``make run``, the embedded PostgreSQL and the test/benchmark helpers that run
NGINX, Envoy and redis-server: free ports, a parent-death signal, the process tree below a pid, and the start loop
that picks another free port when a server loses the race for the one it was given.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the caller must tolerate losing the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class PortInUse(Exception):
    """A server could not bind the port it was started on."""


def start_on_free_port(start: Callable[[int], None], port: int | None, *, attempts: int = 5) -> int:
    """``start(port)`` on ``port``, or, when ``port`` is None, on a free port, picking another one (up to
    ``attempts`` times) each time ``start`` raises :class:`PortInUse` — someone else bound it between our check and
    the server's bind. Returns the port the server runs on; the last :class:`PortInUse` propagates."""
    tries = 1 if port is not None else attempts
    for attempt in range(tries):
        chosen = port if port is not None else free_port()
        try:
            start(chosen)
            return chosen
        except PortInUse:
            if attempt + 1 == tries:
                raise
    raise AssertionError("unreachable")


def pdeathsig_argv(sig: int) -> list[str]:
    """A command prefix that makes the child get ``sig`` when the thread that started it dies (Linux ``setpriv``).

    Not a ``preexec_fn``: running Python between fork and exec in a process whose gRPC threads are busy
    sometimes crashes the child (its event engine finds a closed epoll fd). ``setpriv`` sets PR_SET_PDEATHSIG
    after the exec instead. Without ``setpriv`` (not Linux) the child simply doesn't die with us.
    """
    setpriv = shutil.which("setpriv")
    if sys.platform != "linux" or setpriv is None:
        return []
    return [setpriv, f"--pdeathsig={signal.Signals(sig).name}"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> list[int]:
    """Pids of all processes below ``pid`` (Linux /proc; elsewhere none are found). Needed where children put
    themselves in sessions of their own (PostgreSQL backends), which signalling a process group misses."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until none of ``pids`` runs (zombies count as gone: they hold no memory or sockets)."""
    deadline = time.monotonic() + timeout
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        still = []
        for pid in pending:
            try:
                state = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if state[state.rfind(")") + 2 :].startswith("Z"):
                continue
            still.append(pid)
        pending = still
        if pending:
            time.sleep(0.01)
