"""Prometheus metrics of one gRPC server process, in a registry of its own (tests run several servers at once).

``start_server`` creates a :class:`ServerMetrics`, uses it as the interceptor's :class:`RpcObserver` and hands it
to the app (``app.bind_metrics(metrics)`` when the app has that method) so the app can add its pool and cache.
With ``COWATCH_METRICS_PORT`` set (0 = off) the registry is served over HTTP at ``/metrics``.

Series:

- ``grpc_server_handled_total{grpc_service, grpc_method, grpc_code}``: finished RPCs (refused ones included).
- ``grpc_server_handling_seconds{grpc_service, grpc_method}``: latency histogram.
- ``cowatch_rpc_in_flight``: RPCs being handled now (health and reflection excluded).
- ``cowatch_cache_requests_total{cache, result}``: ``hit``, ``miss`` (loaded from Postgres and stored) or
  ``bypass`` (Redis unavailable or breaker open: answered from Postgres). Hit ratio:
  ``sum(rate(cowatch_cache_requests_total{result="hit"}[5m])) / sum(rate(cowatch_cache_requests_total[5m]))``.
- ``cowatch_cache_loads_total{cache}`` / ``cowatch_cache_coalesced_total{cache}``: database loads after a miss,
  and misses that joined a load already in flight (stampede protection at work).
- ``cowatch_cache_errors_total{operation}``: Redis calls that failed or timed out.
- ``cowatch_circuit_breaker_state{breaker}``: 0 closed, 1 open, 2 half-open.
- ``cowatch_db_pool_connections{pool, state}`` (``in_use`` / ``idle``), ``cowatch_db_pool_max_connections{pool}``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from services.common.breaker import BreakerState

__all__ = ["LATENCY_BUCKETS", "ServerMetrics"]

LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class ServerMetrics:
    """The metrics of one server; also its :class:`~services.common.interceptors.RpcObserver`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self._latency = Histogram(
            "grpc_server_handling_seconds",
            "Time from the RPC reaching the interceptor to its status, by method.",
            ["grpc_service", "grpc_method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge("cowatch_rpc_in_flight", "RPCs being handled (health/reflection excluded).", registry=r)
        self._cache = Counter(
            "cowatch_cache_requests",
            "Cache lookups by result: hit, miss (loaded and stored) or bypass (Redis unavailable).",
            ["cache", "result"],
            registry=r,
        )
        self._loads = Counter("cowatch_cache_loads", "Database loads after a cache miss.", ["cache"], registry=r)
        self._coalesced = Counter(
            "cowatch_cache_coalesced",
            "Cache misses served by a database load already in flight for the same key.",
            ["cache"],
            registry=r,
        )
        self._cache_errors = Counter(
            "cowatch_cache_errors", "Redis calls that failed or timed out.", ["operation"], registry=r
        )
        self._breaker = Gauge(
            "cowatch_circuit_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open.", ["breaker"],
            registry=r,
        )  # fmt: skip
        self._pool = Gauge(
            "cowatch_db_pool_connections", "Open pool connections by state.", ["pool", "state"], registry=r
        )
        self._pool_max = Gauge("cowatch_db_pool_max_connections", "Pool size limit.", ["pool"], registry=r)
        # label lookups cost a lock and a dict probe: keep the children
        self._rpc_children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}
        self._cache_children: dict[tuple[str, str], Any] = {}
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    # --- RpcObserver -----------------------------------------------------------------------------------------

    def rpc_finished(self, method: str, code: grpc.StatusCode, duration_seconds: float) -> None:
        children = self._rpc_children.get((method, code))
        if children is None:
            service, _, name = method.lstrip("/").rpartition("/")
            children = (
                self._handled.labels(service, name, code.name),
                self._latency.labels(service, name),
            )
            self._rpc_children[(method, code)] = children
        children[0].inc()
        children[1].observe(duration_seconds)

    def track_in_flight(self, read: Callable[[], int]) -> None:
        self._in_flight.set_function(read)

    # --- cache -----------------------------------------------------------------------------------------------

    def cache_result(self, cache: str, result: str) -> None:
        child = self._cache_children.get((cache, result))
        if child is None:
            child = self._cache_children[(cache, result)] = self._cache.labels(cache, result)
        child.inc()

    def cache_load(self, cache: str, *, coalesced: bool) -> None:
        (self._coalesced if coalesced else self._loads).labels(cache).inc()

    def cache_error(self, operation: str) -> None:
        self._cache_errors.labels(operation).inc()

    def breaker_changed(self, name: str, state: BreakerState) -> None:
        self._breaker.labels(name).set(int(state))

    # --- pool ------------------------------------------------------------------------------------------------

    def track_pool(self, name: str, pool: Any) -> None:
        """Gauges read from an asyncpg pool at scrape time (``get_size``, ``get_idle_size``, ``get_max_size``)."""
        self._pool.labels(name, "in_use").set_function(lambda: pool.get_size() - pool.get_idle_size())
        self._pool.labels(name, "idle").set_function(pool.get_idle_size)
        self._pool_max.labels(name).set_function(pool.get_max_size)

    # --- exposition --------------------------------------------------------------------------------------------

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the bound port."""
        if self._http is None:
            self._http = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http[0].server_address[1])

    def close(self) -> None:
        if self._http is not None:
            server, thread = self._http
            self._http = None
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def render(self) -> str:
        return generate_latest(self.registry).decode()

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of one sample (0 when absent), e.g. ``value("cowatch_cache_requests_total",
        {"cache": "event", "result": "hit"})``; labels not given are summed over."""
        wanted = labels or {}
        total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
                    total += sample.value
        return total
