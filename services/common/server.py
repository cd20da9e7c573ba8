"""Server bootstrap shared by every cowatch gRPC process.

Order (docs/architecture.md): interceptor → servicers, health, reflection → bind → start → ``app.start()`` (pools) →
readiness loop: health turns SERVING only while ``app.ready()`` answers true (Postgres down → NOT_SERVING,
recovery → SERVING). On SIGTERM/SIGINT: health NOT_SERVING for good, RPCs still accepted for
``shutdown_drain_seconds`` (so load balancers that poll health move away first), then ``server.stop(grace)``
refuses new RPCs and lets in-flight ones finish, then ``app.stop()`` closes the pools.

Every server gets a :class:`~services.common.metrics.ServerMetrics` (served on ``COWATCH_METRICS_PORT``); an app
that defines ``bind_metrics(metrics)`` is handed it before ``start()`` to add its pool and cache. Load shedding:
at most ``max_concurrent_rpcs`` RPCs are handled at once, the next ones are refused at once with
``RESOURCE_EXHAUSTED`` by the interceptor (health and reflection exempt); grpc's own limit sits above that as a
backstop.

Each ``services/<x>/__main__.py`` is just ``run(build_app, XSettings)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from typing import Final, NoReturn, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import tracing
from services.common.auth import TokenVerifier
from services.common.interceptors import RpcInterceptor, RpcObserver
from services.common.logging import configure_logging, get_logger
from services.common.metrics import ServerMetrics
from services.common.settings import CommonSettings, TracingSettings, load_settings

__all__ = ["App", "RunningServer", "run", "serve", "start_server"]

SERVING: Final = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING
DEFAULT_READINESS_INTERVAL: Final = 1.0
DEFAULT_READINESS_TIMEOUT: Final = 2.0
QUIET_SECONDS: Final = 0.1
"""On shutdown, the server stops only once no RPC has arrived for this long (see ``RunningServer.quiesce``)."""
GRPC_LIMIT_HEADROOM: Final = 64
"""grpc's hard limit is this far above the interceptor's, so health checks and watches still get in."""

_log = get_logger("cowatch.server")

S = TypeVar("S", bound=CommonSettings)


class App(Protocol):
    """What a service hands to the bootstrap."""

    @property
    def name(self) -> str:
        """Short name for logs, e.g. ``"event"``."""
        ...

    @property
    def service_names(self) -> Sequence[str]:
        """Full proto service names (``"cowatch.event.v1.EventService"``) for health and reflection."""
        ...

    @property
    def anonymous_methods(self) -> frozenset[str]:
        """Full method names callable without a token (``"/cowatch.event.v1.EventService/GetEvent"``)."""
        ...

    def register(self, server: grpc.aio.Server) -> None:
        """Add the servicers (``add_XServicer_to_server``)."""
        ...

    async def start(self) -> None:
        """Open pools and clients. Called after the server started listening (health still NOT_SERVING)."""
        ...

    async def ready(self) -> bool:
        """Cheap dependency check (``SELECT 1``), polled about once a second; must not raise or hang."""
        ...

    async def stop(self) -> None:
        """Close pools and clients. Called after in-flight RPCs finished."""
        ...


class RunningServer:
    """A started server: ``port`` is the bound port; ``stop()`` shuts it down gracefully."""

    def __init__(
        self,
        *,
        app: App,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        port: int,
        health_names: Sequence[str],
        readiness_interval: float,
        readiness_timeout: float,
        metrics: ServerMetrics,
        interceptor: RpcInterceptor,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.interceptor = interceptor
        self.server = server
        self.health = health_servicer
        self.port = port
        self._health_names = tuple(health_names)
        self._interval = readiness_interval
        self._timeout = readiness_timeout
        self._serving = False
        self._shutting_down = False
        self._stopped = False
        self._loop_task: asyncio.Task[None] | None = None
        self._stop_lock = asyncio.Lock()

    @property
    def serving(self) -> bool:
        return self._serving and not self._shutting_down

    async def check_readiness(self) -> bool:
        """Ask the app once and publish the result to health; returns it."""
        try:
            async with asyncio.timeout(self._timeout):
                ready = bool(await self.app.ready())
        except Exception:
            _log.warning("readiness check failed", service=self.app.name, exc_info=True)
            ready = False
        if self._shutting_down:
            return False
        if ready != self._serving:
            self._serving = ready
            status = SERVING if ready else NOT_SERVING
            for name in self._health_names:
                await self.health.set(name, status)
            if ready:
                _log.info("serving", service=self.app.name)
            else:
                _log.warning("not serving: a dependency is unavailable", service=self.app.name)
        return ready

    def _start_readiness_loop(self) -> None:
        self._loop_task = asyncio.create_task(self._readiness_loop(), name=f"{self.app.name}-readiness")

    async def _readiness_loop(self) -> None:
        while not self._shutting_down:
            await asyncio.sleep(self._interval)
            await self.check_readiness()

    async def begin_shutdown(self) -> None:
        """Health NOT_SERVING for good (the load balancer drains us); stop polling readiness. Idempotent."""
        if self._shutting_down:
            return
        self._shutting_down = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self.health.enter_graceful_shutdown()

    async def quiesce(self, grace: float | None) -> float | None:
        """Refuse new RPCs with UNAVAILABLE (never CANCELLED), wait until none is in flight and none has arrived for
        :data:`QUIET_SECONDS` (so calls grpc-core had already taken in are answered), within ``grace``; returns the
        grace left. Only then does ``server.stop()`` run: it cancels whatever grpc-core still holds."""
        self.interceptor.refusing = True
        loop = asyncio.get_running_loop()
        deadline = None if grace is None else loop.time() + grace
        while deadline is None or loop.time() < deadline:
            quiet = time.monotonic() - self.interceptor.last_arrival >= QUIET_SECONDS
            if self.interceptor.in_flight == 0 and quiet:
                break
            await asyncio.sleep(0.01)
        return None if deadline is None else max(0.0, deadline - loop.time())

    async def stop(self, grace: float | None = None) -> None:
        """``begin_shutdown()``, refuse new RPCs (UNAVAILABLE), let in-flight ones finish within ``grace`` s, stop
        the server, ``app.stop()``."""
        async with self._stop_lock:
            if self._stopped:
                return
            await self.begin_shutdown()
            grace = await self.quiesce(grace)
            await self.server.stop(grace)
            try:
                await self.app.stop()
            except Exception:
                _log.exception("app stop failed", service=self.app.name)
            self.metrics.close()
            self._stopped = True

    async def wait_for_termination(self) -> None:
        """Wait until the server has stopped. Do not cancel this wait: grpc then cancels its own shutdown."""
        await asyncio.shield(self.server.wait_for_termination())


async def start_server(
    app: App,
    settings: CommonSettings,
    *,
    verifier: TokenVerifier,
    port: int | None = None,
    host: str | None = None,
    observer: RpcObserver | None = None,
    readiness_interval: float = DEFAULT_READINESS_INTERVAL,
    readiness_timeout: float = DEFAULT_READINESS_TIMEOUT,
    metrics: ServerMetrics | None = None,
) -> RunningServer:
    """Build, bind and start the server for ``app``; ``port=0`` binds an ephemeral port (see ``.port``)."""
    metrics = metrics or ServerMetrics()
    interceptor = RpcInterceptor(
        verifier=verifier,
        anonymous_methods=app.anonymous_methods,
        observer=observer or metrics,
        max_in_flight=settings.max_concurrent_rpcs,
    )
    metrics.track_in_flight(lambda: interceptor.in_flight)
    server = grpc.aio.server(
        # Tracing off: no interceptor but ours. On: the span opens first, so it covers auth, errors and logging.
        interceptors=[*tracing.server_interceptors(), interceptor],
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs + GRPC_LIMIT_HEADROOM,
        options=[
            # Never silently share a port with another process (grpc enables SO_REUSEPORT by default on Linux).
            ("grpc.so_reuseport", 0),
            # gRPC's core CANCELs calls once more than 1,000 wait for the Python server to pick them up. Let them
            # wait instead: the interceptor then admits them or refuses them at once with RESOURCE_EXHAUSTED,
            # which clients can act on (CANCELLED tells them nothing).
            ("grpc.server.max_pending_requests", 20_000),
            ("grpc.server.max_pending_requests_hard_limit", 40_000),
        ],
    )

    health_servicer = health.aio.HealthServicer()
    health_names = [health.OVERALL_HEALTH, *app.service_names]
    for name in health_names:  # the async servicer starts out SERVING
        await health_servicer.set(name, NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    app.register(server)
    reflection.enable_server_reflection([*app.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)

    bind_host = settings.grpc_host if host is None else host
    bind_port = settings.grpc_port if port is None else port
    address = f"[{bind_host}]:{bind_port}" if ":" in bind_host else f"{bind_host}:{bind_port}"
    bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    _log.info("listening", service=app.name, host=bind_host, port=bound)

    running = RunningServer(
        app=app,
        server=server,
        health_servicer=health_servicer,
        port=bound,
        health_names=health_names,
        readiness_interval=readiness_interval,
        readiness_timeout=readiness_timeout,
        metrics=metrics,
        interceptor=interceptor,
    )
    bind_metrics = getattr(app, "bind_metrics", None)
    if callable(bind_metrics):
        bind_metrics(metrics)
    try:
        if settings.metrics_port:
            metrics.serve(settings.metrics_port, settings.metrics_host)
            _log.info("metrics", service=app.name, host=settings.metrics_host, port=settings.metrics_port)
        await app.start()
    except BaseException:
        await running.begin_shutdown()
        await server.stop(0)
        metrics.close()
        raise
    await running.check_readiness()
    running._start_readiness_loop()
    return running


async def serve(
    app: App,
    settings: CommonSettings,
    *,
    verifier: TokenVerifier,
    stop_signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> int:
    """Run ``app`` until a stop signal, then shut down gracefully. Returns the process exit code."""
    try:
        running = await start_server(app, settings, verifier=verifier)
    except Exception:
        _log.exception("startup failed", service=app.name)
        return 1

    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    second_signal = asyncio.Event()
    forced: list[asyncio.Task[None]] = []

    def on_signal(sig: signal.Signals) -> None:
        if not stop_requested.is_set():
            _log.info("shutdown requested", service=app.name, signal=sig.name)
            stop_requested.set()
        elif not forced:
            _log.warning("second signal: cancelling in-flight RPCs", service=app.name, signal=sig.name)
            second_signal.set()
            forced.append(loop.create_task(running.server.stop(0)))

    for sig in stop_signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        # (Not raced against server.wait_for_termination(): cancelling that wait cancels grpc's own shutdown
        # future, and the server never terminates without stop() anyway.)
        await stop_requested.wait()
        await running.begin_shutdown()
        if settings.shutdown_drain_seconds:
            _log.info("draining", service=app.name, seconds=settings.shutdown_drain_seconds)
            with contextlib.suppress(TimeoutError):  # a second signal cuts the drain short
                await asyncio.wait_for(second_signal.wait(), settings.shutdown_drain_seconds)
        await running.stop(settings.shutdown_grace_seconds)
        for task in forced:
            await task
    finally:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
    _log.info("stopped", service=app.name)
    return 0


def run(app_factory: Callable[[S], App], settings_cls: type[S]) -> NoReturn:
    """Process entry point: settings (exit 2 when invalid), logging, serve until SIGTERM, exit 0."""
    settings = load_settings(settings_cls)
    configure_logging(level=settings.log_level, json=settings.log_json, cache_loggers=True)
    verifier = TokenVerifier.from_settings(settings)
    tracing.configure(settings.service_name, load_settings(TracingSettings))
    app = app_factory(settings)
    try:
        code = asyncio.run(serve(app, settings, verifier=verifier))
    finally:
        tracing.shutdown()
    raise SystemExit(code)
