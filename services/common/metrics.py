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

import bisect
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

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
        self._rpcs = _RpcCollector()
        r.register(self._rpcs)
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
        self._cache_children: dict[tuple[str, str], Any] = {}
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    # --- RpcObserver -----------------------------------------------------------------------------------------

    def rpc_finished(self, method: str, code: grpc.StatusCode, duration_seconds: float) -> None:
        self._rpcs.observe(method, code, duration_seconds)

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


class _RpcCollector(Collector):
    """``grpc_server_handled_total`` and ``grpc_server_handling_seconds``, counted in plain ints and built into
    metric families only when scraped.

    ``rpc_finished`` runs once per RPC on the event loop; prometheus_client's Counter/Histogram take a lock and
    update several values per observation, a visible share of a cheap RPC's cost (B1). Here an observation is a
    dict probe, a bisect and three int additions; the scrape (another thread) reads ints, each read atomic
    under the GIL, so a scrape may see an RPC counted in one series a moment before the other — as with any
    pair of independent counters.
    """

    def __init__(self) -> None:
        self._handled: dict[tuple[str, grpc.StatusCode], list[int]] = {}
        self._latency: dict[str, list[float]] = {}
        """method → per-bucket counts (non-cumulative, +Inf last), then the sum of durations."""

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        handled = self._handled.get((method, code))
        if handled is None:
            handled = self._handled[(method, code)] = [0]
        handled[0] += 1
        latency = self._latency.get(method)
        if latency is None:
            latency = self._latency[method] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, by method and status code.",
            labels=["grpc_service", "grpc_method", "grpc_code"],
        )
        for (method, code), count in list(self._handled.items()):
            service, _, name = method.lstrip("/").rpartition("/")
            handled.add_metric([service, name, code.name], count[0])
        latency = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time from the RPC reaching the interceptor to its status, by method.",
            labels=["grpc_service", "grpc_method"],
        )
        for method, values in list(self._latency.items()):
            service, _, name = method.lstrip("/").rpartition("/")
            counts = values[:-1]
            cumulative, buckets = 0.0, []
            for bound, in_bucket in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += in_bucket
                buckets.append((_le(bound), cumulative))
            latency.add_metric([service, name], buckets, values[-1])
        yield handled
        yield latency


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
