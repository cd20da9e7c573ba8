"""The copy-pasteable tour ``make run`` prints once the stack is up: where everything listens, dev tokens, and
curl / buf curl commands for JSON, native gRPC and gRPC-web through Envoy."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from services.dev.token import GUEST_USER

REPO_ROOT: Final = Path(__file__).resolve().parents[2]


def walkthrough(
    *,
    http_port: int,
    admin_port: int,
    service_ports: Mapping[str, int],
    database: str,
    embedded: str | None,
    token: str,
    guest_token: str,
    notification_port: int,
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
        f"  mail       notification stand-in :{notification_port} prints each message it gets ('notification |')",
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
        "",
        "# book 2 seats as the guest, list the guest's bookings, the host's guest list",
        f'curl -sS -X POST {gw}/v1/bookings -H "authorization: Bearer $GUEST_TOKEN" \\',
        '  -H \'content-type: application/json\' -d "{\\"event\\":\\"$EVENT\\",\\"seats\\":2}"; echo',
        f'curl -sS {gw}/v1/bookings -H "authorization: Bearer $GUEST_TOKEN"; echo',
        f'curl -sS {gw}/v1/$EVENT/guests -H "authorization: Bearer $TOKEN"; echo',
        "",
        "# the host's profile and rating (reviews open once an event is held)",
        f"curl -sS {gw}/v1/users/dev-user/hostProfile; echo",
        f"curl -sS {gw}/v1/users/dev-user/rating; echo",
        "",
        "Ctrl-C stops everything.",
        rule,
    ]
    return "\n".join(lines) + "\n"
