# syntax=docker/dockerfile:1.7
# One image for every cowatch process. The process is the first argument (or $COWATCH_PROCESS):
#
#   docker run IMAGE event | booking | review      the gRPC services (python -m services.<name>)
#   docker run IMAGE worker                        the outbox/reminder worker
#   docker run IMAGE offer-sweep                   the waitlist offer sweep
#   docker run IMAGE standin                       the notification stand-in (logs what it receives)
#   docker run IMAGE python -m ...                 anything else
#
# Configuration: COWATCH_* environment variables, documented in .env.example. Build: docker build -t cowatch .
#
# A second image, the compose gateway (--target envoy): Envoy with envoy/envoy.yaml rendered for the compose network
# at build time (services/dev/compose_envoy.py) and the descriptor set it transcodes with.
# A third, the compose connection pooler (--target pgbouncer): Debian's PgBouncer with pgbouncer/pgbouncer.ini.

ARG PYTHON_VERSION=3.11

# --- builder: the locked runtime dependencies in /app/.venv ----------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS builder
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Only the lock decides what is installed (--frozen: a stale uv.lock fails the build); dev tools (pytest, envoy,
# buf, dbmate, pyyaml) stay out. The project itself is not installed: its code is copied into the runtime stage
# and found through PYTHONPATH, so this layer is rebuilt only when the dependencies change.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    uv sync --frozen --no-dev --no-install-project

# --- envoy: the compose gateway ------------------------------------------------------------------------------
# envoy/envoy.yaml is the one source; only its upstreams (the compose service names) and the descriptor path change.
FROM python:${PYTHON_VERSION}-slim AS envoy-config
WORKDIR /src
RUN pip install --no-cache-dir --disable-pip-version-check pyyaml==6.0.3
COPY envoy/envoy.yaml envoy/envoy.yaml
COPY services/__init__.py services/__init__.py
COPY services/dev/__init__.py services/dev/envoy_config.py services/dev/compose_envoy.py services/dev/
RUN python -m services.dev.compose_envoy -o /envoy.yaml

FROM envoyproxy/envoy:v1.40-latest AS envoy
COPY --from=envoy-config /envoy.yaml /etc/envoy/envoy.yaml
COPY gen/descriptors/cowatch.binpb /etc/envoy/cowatch.binpb

# --- pgbouncer: the compose connection pooler (README "Scaling") ----------------------------------------------
# Debian's package, the PgBouncer tests/e2e/test_pgbouncer.py runs, with pgbouncer/pgbouncer.ini. The one user and
# password come from the environment at start (POSTGRES_USER, POSTGRES_PASSWORD, as for the postgres image): no
# secret in the image.
FROM debian:bookworm-slim AS pgbouncer
RUN apt-get update \
    && apt-get install -y --no-install-recommends pgbouncer \
    && rm -rf /var/lib/apt/lists/*
COPY pgbouncer/pgbouncer.ini /etc/pgbouncer/pgbouncer.ini
COPY --chmod=0755 <<'EOF' /usr/local/bin/cowatch-pgbouncer
#!/bin/sh
set -e
: "${POSTGRES_USER:?set POSTGRES_USER}" "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
umask 077
printf '"%s" "%s"\n' "$POSTGRES_USER" "$POSTGRES_PASSWORD" > /tmp/pgbouncer-userlist.txt
exec pgbouncer /etc/pgbouncer/pgbouncer.ini
EOF
USER postgres
EXPOSE 6432
ENTRYPOINT ["cowatch-pgbouncer"]

# --- runtime (the default target: last in this file) ---------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
ARG VERSION=dev
LABEL org.opencontainers.image.title="cowatch" \
      org.opencontainers.image.description="cowatch backend: EventService, BookingService, ReviewService, worker" \
      org.opencontainers.image.source="https://github.com/cowatch/cowatch" \
      org.opencontainers.image.version="${VERSION}"
RUN groupadd --system --gid 10001 cowatch \
    && useradd --system --uid 10001 --gid cowatch --no-create-home --home-dir /nonexistent cowatch
WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY gen/ /app/gen/
COPY services/ /app/services/
COPY migrations/ /app/migrations/

COPY --chmod=0755 <<'EOF' /usr/local/bin/cowatch
#!/bin/sh
# cowatch [process] [args...]: the image's entry point; the process from the first argument or $COWATCH_PROCESS.
set -e
if [ $# -gt 0 ]; then process="$1"; shift; else process="${COWATCH_PROCESS:-event}"; fi
case "$process" in
  event|booking|review) exec python -m "services.$process" "$@" ;;
  worker) exec python -m services.notification.worker "$@" ;;
  offer-sweep) exec python -m services.booking.offer_sweep "$@" ;;
  standin) exec python -m services.notification.standin "$@" ;;
  *) exec "$process" "$@" ;;
esac
EOF

# One healthcheck for every process, told apart by what PID 1 runs: the services answer grpc.health.v1 (SERVING
# only while their database answers, NOT_SERVING while draining), the stand-in too. The worker serves no RPCs: it
# is checked through its Prometheus endpoint when COWATCH_METRICS_PORT is set (the event loop answers HTTP);
# without it there is nothing to ask beyond "the process runs", which Docker already knows, so the check passes.
COPY --chmod=0755 <<'EOF' /usr/local/bin/cowatch-healthcheck
#!/app/.venv/bin/python
import os
import sys
import urllib.request

with open("/proc/1/cmdline", "rb") as f:
    argv = f.read().decode(errors="replace").split("\0")
module = next((a for a in argv if a.startswith("services.")), "")
if module == "services.booking.offer_sweep":
    sys.exit(0)  # serves nothing to ask: Docker already knows whether it runs (its passes are in its logs)
if module == "services.notification.worker":
    port = int(os.environ.get("COWATCH_METRICS_PORT") or 0)
    if port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
            sys.exit(0 if response.status == 200 else 1)
    sys.exit(0)

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

defaults = {"services.event": 50051, "services.booking": 50052, "services.review": 50053}
if module == "services.notification.standin":
    port = int(os.environ.get("COWATCH_STANDIN_PORT") or 50060)
elif module in defaults:
    port = int(os.environ.get("COWATCH_GRPC_PORT") or defaults[module])
else:
    sys.exit(f"cowatch-healthcheck: not a cowatch process: {' '.join(argv)}")
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.RpcError as exc:
        sys.exit(f"{module}: health check failed: {exc.code().name}")
print(f"{module}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
EOF

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COWATCH_GRPC_HOST=0.0.0.0 \
    COWATCH_LOG_JSON=true
USER cowatch:cowatch
# 50051-50053: services (one per container), 50060: stand-in, 9100: /metrics when COWATCH_METRICS_PORT=9100.
EXPOSE 50051 50052 50053 50060 9100
HEALTHCHECK --interval=5s --timeout=4s --start-period=20s --retries=3 CMD ["cowatch-healthcheck"]
# SIGTERM: the services turn NOT_SERVING, drain and stop within COWATCH_SHUTDOWN_GRACE_SECONDS (+ drain).
STOPSIGNAL SIGTERM
ENTRYPOINT ["cowatch"]
CMD []
