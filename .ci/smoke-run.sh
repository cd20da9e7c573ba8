#!/usr/bin/env bash
# Smoke test of `make run`, the way a developer uses it: embedded PostgreSQL (DATABASE_URL unset), the whole
# stack in the foreground, one CreateEvent through Envoy with `buf curl` (native gRPC), one JSON GET with curl,
# then Ctrl-C (SIGINT to the process group) — and nothing may be left running. A second `make run` on the same
# data must still have the event; that one is stopped with SIGTERM.
#
#   bash .ci/smoke-run.sh          (from anywhere; uses the default ports 8080, 9901, 5005x, 50060, 54329)
#
# The cluster lives in a temporary directory (COWATCH_DEV_PGDATA), so a developer's .dev/pgdata is untouched
# and every run exercises the first-run path (initdb) too.
set -euo pipefail
cd "$(dirname "$0")/.."

unset DATABASE_URL COWATCH_DATABASE_URL
START_TIMEOUT="${SMOKE_START_TIMEOUT:-240}"  # the first run may install .venv and run initdb
STOP_TIMEOUT="${SMOKE_STOP_TIMEOUT:-60}"
HTTP_PORT="${COWATCH_DEV_HTTP_PORT:-8080}"
GATEWAY="http://127.0.0.1:${HTTP_PORT}"
READY_MARKER="cowatch dev stack ready"

work="$(mktemp -d "${TMPDIR:-/tmp}/cowatch-smoke-XXXXXX")"
export COWATCH_DEV_PGDATA="$work/pgdata"
job_pid=""
step_started=0

say() { printf 'smoke-run: %s\n' "$*"; }

fail() {
  printf '\nsmoke-run: FAIL: %s\n' "$*" >&2
  if [ -n "${log:-}" ] && [ -f "$log" ]; then
    printf -- '--- make run output (last 60 lines of %s) ---\n' "$log" >&2
    tail -n 60 "$log" >&2 || true
  fi
  stop_job KILL || true
  exit 1
}

alive() { [ -n "$job_pid" ] && kill -0 "$job_pid" 2>/dev/null; }

# Stop the background `make run` (its own process group, thanks to set -m) and wait for it.
stop_job() {
  local sig="$1"
  alive || return 0
  kill "-$sig" -- "-$job_pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while alive && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  if alive; then
    kill -KILL -- "-$job_pid" 2>/dev/null || true
    wait "$job_pid" 2>/dev/null || true
    return 1
  fi
  wait "$job_pid" 2>/dev/null || true
  return 0
}

cleanup() {
  stop_job KILL || true
  rm -rf "$work"
}
trap cleanup EXIT

# Start `make run` in the background, in its own process group (like a terminal's foreground job: a SIGINT to
# the group reaches make and the launcher), and wait for the ready line.
start_stack() {
  log="$work/make-run-$1.log"
  step_started=$SECONDS
  set -m
  make run >"$log" 2>&1 &
  job_pid=$!
  set +m
  local deadline=$((SECONDS + START_TIMEOUT))
  until grep -q "$READY_MARKER" "$log"; do
    alive || fail "make run exited before it was ready"
    [ "$SECONDS" -lt "$deadline" ] || fail "make run not ready within ${START_TIMEOUT}s"
    sleep 0.5
  done
  say "make run #$1 ready in $((SECONDS - step_started))s ($(grep -o "$READY_MARKER in [0-9.]*s" "$log"))"
}

# The pids the launcher started (from its "started ..." line) plus the postmaster's.
stack_pids() {
  grep -E '^dev +\| started ' "$log" | grep -o 'pid [0-9]*' | awk '{print $2}'
  if [ -f "$COWATCH_DEV_PGDATA/postmaster.pid" ]; then head -n 1 "$COWATCH_DEV_PGDATA/postmaster.pid"; fi
}

# Stop with a signal, then check that every process of the stack is gone and every port is free.
stop_stack() {
  local sig="$1" pids
  pids="$(stack_pids | sort -u | tr '\n' ' ')"
  [ -n "$pids" ] || fail "could not read the stack's pids from the output"
  step_started=$SECONDS
  stop_job "$sig" || fail "make run still running ${STOP_TIMEOUT}s after SIG$sig"
  local left=()
  for pid in $pids; do
    # a zombie is gone in every way that matters; anything else still running is a leak
    state="$(ps -o stat= -p "$pid" 2>/dev/null || true)"
    if [ -n "$state" ] && [[ $state != Z* ]]; then left+=("$pid: $(ps -o args= -p "$pid" | cut -c1-120)"); fi
  done
  if [ "${#left[@]}" -gt 0 ]; then
    printf '  left running: %s\n' "${left[@]}" >&2
    fail "processes left behind after SIG$sig"
  fi
  for port in "$HTTP_PORT" "${COWATCH_DEV_ADMIN_PORT:-9901}" "${COWATCH_DEV_PG_PORT:-54329}" \
    "${COWATCH_DEV_EVENT_PORT:-50051}" "${COWATCH_DEV_BOOKING_PORT:-50052}" "${COWATCH_DEV_REVIEW_PORT:-50053}" \
    "${COWATCH_DEV_WEB_PORT:-8090}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then fail "port $port still accepts connections"; fi
  done
  grep -q "stopped PostgreSQL" "$log" || fail "no clean PostgreSQL stop in the output"
  say "SIG$sig: everything stopped in $((SECONDS - step_started))s, no process left (checked: $pids)"
}

# --- run 1: fresh data, gRPC write + JSON read, Ctrl-C -------------------------------------------------------
start_stack 1
token="$(.venv/bin/python -m services.dev.token)" || fail "services.dev.token failed"
start_time="$(.venv/bin/python -c 'import datetime as d; print((d.datetime.now(d.UTC)+d.timedelta(days=7)).strftime("%Y-%m-%dT19:00:00Z"))')"
event_json='{"film":{"id":"tt0069293","title":"Solaris"},"title":"Smoke test night","startTime":"'"$start_time"'","timeZone":"Europe/Berlin","duration":"7200s","place":{"name":"CI","address":"Torstr. 1","city":"Smoketown"},"capacity":4,"visibility":"PUBLIC"}'

created="$(.venv/bin/buf curl --protocol grpc --http2-prior-knowledge --schema gen/descriptors/cowatch.binpb \
  -H "authorization: Bearer $token" -d "{\"event\":$event_json}" \
  "$GATEWAY/cowatch.event.v1.EventService/CreateEvent" 2>&1)" || fail "buf curl CreateEvent failed: $created"
name="$(printf '%s' "$created" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["name"])')" \
  || fail "CreateEvent answered without a name: $created"
say "CreateEvent (gRPC through Envoy) -> $name"

fetched="$(curl -sS --fail-with-body "$GATEWAY/v1/$name")" || fail "GET /v1/$name failed: $fetched"
printf '%s' "$fetched" | .venv/bin/python -c '
import json, sys
event = json.load(sys.stdin)
assert event["name"] == sys.argv[1], event
assert event["title"] == "Smoke test night" and event["state"] == "SCHEDULED", event
' "$name" || fail "GET /v1/$name returned something else: $fetched"
say "GET /v1/$name (JSON through Envoy) -> 200, same event"

# the share link opens the web page, served on the same origin (web/dist, no Node needed)
share="$(printf '%s' "$created" | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["shareLink"])')"
page="$(curl -sS --fail-with-body "$share")" || fail "GET $share failed: $page"
case "$page" in *'id="main"'*) ;; *) fail "the share link $share did not serve the web page: $page" ;; esac
say "GET $share (the share link) -> the web page"

stop_stack INT

# --- run 2: the same data directory, the event is still there; SIGTERM ---------------------------------------
start_stack 2
fetched="$(curl -sS --fail-with-body "$GATEWAY/v1/$name")" || fail "after a restart GET /v1/$name failed: $fetched"
say "second make run kept the data: GET /v1/$name -> 200"
stop_stack TERM

say "OK"
