"""A LOCAL STAND-IN for the company's notification service — for ``make run`` and tests, NOT part of the product.

It is a real gRPC server implementing ``cowatch.notification.v1.NotificationService`` as the contract
describes it, without sending any mail:

* ``Send`` validates the request the way the real service would (dedupe key, ``users/{id}`` recipients, a known
  template with every parameter it needs — :mod:`services.notification.templates`) and answers
  ``INVALID_ARGUMENT`` otherwise;
* it dedupes by ``dedupe_key``: a repeated key is acknowledged with ``duplicate = true`` and not "sent" again;
* it logs one readable line per message (addresses are not logged);
* it keeps what it received in an :class:`Inbox` that tests can read and wait on, and that survives a
  stop/start of the server (to play "the notification service is down for a while");
* tests can make it fail the next calls (:meth:`StandIn.fail_next`) or answer slowly (``delay_seconds``);
* with ``--record FILE`` it appends one JSON line per call it accepted (``key``, ``id``, ``template``,
  ``recipients``, ``duplicate``, ``received_at`` in Unix seconds) — what another process (the benchmark) reads
  afterwards — and, like the real service, it remembers the keys of that file across its own restarts: a key
  accepted by an earlier run is acknowledged as a duplicate, not "sent" again.

``python -m services.notification.standin [--port N] [--host H] [--record FILE]`` (env ``COWATCH_STANDIN_PORT``,
default 50060; ``COWATCH_STANDIN_RECORD``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, NoReturn

import grpc
from cowatch.notification.v1 import notification_pb2, notification_pb2_grpc
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import tracing
from services.common.errors import InvalidArgument, Violations
from services.common.grpc_errors import to_rpc_status
from services.common.interceptors import REQUEST_ID_METADATA_KEY
from services.common.logging import configure_logging, get_logger
from services.common.settings import TracingSettings, load_settings
from services.notification.settings import StandinSettings
from services.notification.templates import TEMPLATES, missing_params

__all__ = ["Delivery", "Inbox", "StandIn", "main", "summary"]

SERVICE_NAME: Final = notification_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name
MAX_DEDUPE_KEY: Final = 200
_USER_NAME = re.compile(r"^users/[^/\s]{1,128}$")

_log = get_logger("cowatch.notification.standin")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message the stand-in accepted (the first time its dedupe key was seen)."""

    notification_id: str
    dedupe_key: str
    template_id: str
    recipients: tuple[str, ...]
    params: dict[str, Any]
    request_id: str
    received_at: datetime  # wall clock, UTC
    received_monotonic: float = field(repr=False, default=0.0)
    traceparent: str = ""
    """The W3C trace context the call came with (the worker sends it when tracing is on)."""

    @property
    def user_ids(self) -> tuple[str, ...]:
        return tuple(r.removeprefix("users/") for r in self.recipients)


class Inbox:
    """Everything the stand-in accepted, by dedupe key, plus counters of repeats and refused calls."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.by_key: dict[str, Delivery] = {}
        self.accepted_per_key: dict[str, int] = {}  # how often a key was accepted as NEW: must stay 1
        self.remembered: dict[str, str] = {}  # key -> notification id, accepted by an earlier run (record file)
        self.duplicates: int = 0
        self.refused: int = 0
        self.calls: int = 0
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()

    def _accept(
        self, request: notification_pb2.SendRequest, params: dict[str, Any], request_id: str, traceparent: str = ""
    ) -> tuple[Delivery, bool]:
        existing = self.by_key.get(request.dedupe_key)
        if existing is not None:
            self.duplicates += 1
            return existing, True
        earlier = self.remembered.get(request.dedupe_key)
        if earlier is not None:
            self.duplicates += 1
            return self._delivery(earlier, request, params, request_id, traceparent), True
        delivery = self._delivery(f"standin-{next(self._ids)}", request, params, request_id, traceparent)
        self.deliveries.append(delivery)
        self.by_key[delivery.dedupe_key] = delivery
        self.accepted_per_key[delivery.dedupe_key] = self.accepted_per_key.get(delivery.dedupe_key, 0) + 1
        return delivery, False

    @staticmethod
    def _delivery(
        notification_id: str,
        request: notification_pb2.SendRequest,
        params: dict[str, Any],
        request_id: str,
        traceparent: str = "",
    ) -> Delivery:
        return Delivery(
            notification_id=notification_id,
            dedupe_key=request.dedupe_key,
            template_id=request.template_id,
            recipients=tuple(request.recipients),
            params=params,
            request_id=request_id,
            received_at=datetime.now(UTC),
            received_monotonic=time.monotonic(),
            traceparent=traceparent,
        )

    def remember(self, lines: IO[str]) -> int:
        """Load the keys a record file says were accepted (by an earlier run); returns how many."""
        before = len(self.remembered)
        for line in lines:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                entry = json.loads(line)
                if not entry.get("duplicate") and isinstance(entry.get("key"), str):
                    self.remembered.setdefault(entry["key"], str(entry.get("id") or "standin-earlier"))
        return len(self.remembered) - before

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def find(
        self,
        template_id: str | None = None,
        *,
        event: str | None = None,
        recipient: str | None = None,
        key_prefix: str | None = None,
    ) -> list[Delivery]:
        """Accepted messages matching every given criterion (``recipient`` is a user id)."""
        out = []
        for d in self.deliveries:
            if template_id is not None and d.template_id != template_id:
                continue
            if event is not None and d.params.get("event") != event:
                continue
            if recipient is not None and recipient not in d.user_ids:
                continue
            if key_prefix is not None and not d.dedupe_key.startswith(key_prefix):
                continue
            out.append(d)
        return out

    async def wait_for(self, predicate: Callable[[Inbox], bool], within: float = 5.0) -> None:
        """Wait until ``predicate(inbox)`` holds; ``TimeoutError`` after ``within`` seconds."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def wait_count(self, n: int, within: float = 5.0, **criteria: Any) -> list[Delivery]:
        """Wait until at least ``n`` messages match ``criteria`` (see :meth:`find`); returns them."""
        await self.wait_for(lambda inbox: len(inbox.find(**criteria)) >= n, within)
        return self.find(**criteria)


def summary(delivery: Delivery) -> str:
    """One readable line: template → recipients: what, when, where (no street address), link."""
    p = delivery.params
    what = f'"{p.get("event_title", "?")}" ({p.get("film_title", "?")})'
    parts = [what, str(p.get("start_local", "?")), f"{p.get('place_name', '?')}, {p.get('place_city', '?')}"]
    changes = p.get("changes")
    if isinstance(changes, list) and changes:
        described = (f"{c.get('field')}: {c.get('old')} -> {c.get('new')}" for c in changes if isinstance(c, dict))
        parts.append("changed: " + "; ".join(described))
    for extra in ("role", "guest_name", "seats", "reason", "message"):
        value = p.get(extra)
        if value not in (None, ""):
            # Struct numbers are doubles: show 2.0 seats as 2
            parts.append(f"{extra}={int(value) if isinstance(value, float) and value.is_integer() else value}")
    parts.append(str(p.get("link", "")))
    return f"{delivery.template_id} -> {', '.join(delivery.recipients)}: " + " | ".join(parts)


def _validate(request: notification_pb2.SendRequest, params: dict[str, Any]) -> None:
    v = Violations()
    if not request.dedupe_key:
        v.add("dedupe_key", "is required")
    elif len(request.dedupe_key) > MAX_DEDUPE_KEY:
        v.add("dedupe_key", f"must be at most {MAX_DEDUPE_KEY} characters")
    if not request.recipients:
        v.add("recipients", "must name at least one user")
    for i, r in enumerate(request.recipients):
        if not _USER_NAME.match(r):
            v.add(f"recipients[{i}]", "must be a user name of the form users/{user}")
    if request.template_id not in TEMPLATES:
        v.add("template_id", f"unknown template {request.template_id!r}")
    else:
        for name in missing_params(request.template_id, params):
            v.add(f"params.{name}", f"is required by template {request.template_id}")
    v.raise_if_any("INVALID_NOTIFICATION", "the notification can't be sent")


class StandinServicer(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(self, standin: StandIn) -> None:
        self._standin = standin

    async def Send(
        self, request: notification_pb2.SendRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> notification_pb2.SendResponse:
        s = self._standin
        inbox = s.inbox
        inbox.calls += 1
        if s.delay_seconds:
            await asyncio.sleep(s.delay_seconds)
        if s.failures:
            code = s.failures.pop(0)
            inbox.refused += 1
            await inbox._notify()
            await context.abort(code, "stand-in: injected failure")
        params = json_format.MessageToDict(request.params)
        try:
            _validate(request, params)
        except InvalidArgument as exc:
            inbox.refused += 1
            await inbox._notify()
            _log.warning("refused", dedupe_key=request.dedupe_key, template_id=request.template_id, problem=str(exc))
            status = to_rpc_status(exc)
            await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)
        request_id = traceparent = ""
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_METADATA_KEY and isinstance(value, str):
                request_id = value
            elif key == tracing.TRACEPARENT and isinstance(value, str):
                traceparent = value
        delivery, duplicate = inbox._accept(request, params, request_id, traceparent)
        if s.record is not None:
            s.record.write(
                json.dumps(
                    {
                        "key": delivery.dedupe_key,
                        "id": delivery.notification_id,
                        "template": delivery.template_id,
                        "recipients": list(delivery.recipients),
                        "duplicate": duplicate,
                        "received_at": time.time(),
                    }
                )
                + "\n"
            )
        if s.log_messages:
            if duplicate:
                _log.info("duplicate (not sent again)", dedupe_key=delivery.dedupe_key, request_id=request_id)
            else:
                _log.info(summary(delivery), dedupe_key=delivery.dedupe_key, request_id=request_id)
        await inbox._notify()
        return notification_pb2.SendResponse(notification_id=delivery.notification_id, duplicate=duplicate)


class StandIn:
    """The stand-in server. ``await start(port=0)`` (returns the port), ``await stop()``; ``start`` again to
    come back on the same port with the same :class:`Inbox` (what it had received, and its dedupe memory)."""

    def __init__(self, inbox: Inbox | None = None, *, log_messages: bool = True, record: Path | None = None) -> None:
        self.inbox = inbox or Inbox()
        self.log_messages = log_messages
        self.record_path = record
        self.record: IO[str] | None = None
        self.delay_seconds = 0.0
        self.failures: list[grpc.StatusCode] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def fail_next(self, n: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        """Answer the next ``n`` Send calls with ``code`` (before looking at them)."""
        self.failures.extend([code] * n)

    async def start(self, port: int | None = None, host: str | None = None) -> int:
        if self._server is not None:
            return self.port
        self.host = host or self.host
        bind_port = self.port if port is None else port
        server = grpc.aio.server(interceptors=tracing.server_interceptors(), options=[("grpc.so_reuseport", 0)])
        notification_pb2_grpc.add_NotificationServiceServicer_to_server(StandinServicer(self), server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        bound = server.add_insecure_port(f"{self.host}:{bind_port}")
        if bound == 0:
            raise OSError(f"stand-in: could not bind {self.host}:{bind_port}")
        await server.start()
        self._server = server
        self.port = bound
        if self.record_path is not None and self.record is None:
            if self.record_path.exists():
                with self.record_path.open(encoding="utf-8") as earlier:
                    self.inbox.remember(earlier)
            self.record = self.record_path.open("a", encoding="utf-8", buffering=1)  # line by line: read live
        _log.info("notification STAND-IN listening (logs messages, sends no mail)", host=self.host, port=bound)
        return bound

    async def stop(self, grace: float | None = None) -> None:
        server, self._server = self._server, None
        if server is not None:
            if self._health is not None:
                await self._health.enter_graceful_shutdown()
            await server.stop(grace)
            if self.record is not None:
                self.record.close()
                self.record = None
            _log.info("notification stand-in stopped", port=self.port)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await asyncio.shield(self._server.wait_for_termination())

    async def __aenter__(self) -> StandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _serve(host: str, port: int, record: Path | None) -> int:
    standin = StandIn(record=record)
    await standin.start(port, host)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await standin.stop(1.0)
    return 0


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(
        prog="python -m services.notification.standin",
        description="Local stand-in of the notification service (logs messages, sends no mail).",
    )
    parser.add_argument("--host", help="bind address (default: $COWATCH_STANDIN_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $COWATCH_STANDIN_PORT or 50060; 0 = any)")
    parser.add_argument("--record", type=Path, help="append a JSON line per accepted call to this file")
    args = parser.parse_args(argv)
    overrides: Mapping[str, Any] = {
        k: v
        for k, v in (("standin_host", args.host), ("standin_port", args.port), ("standin_record", args.record))
        if v is not None
    }
    settings = load_settings(StandinSettings, **overrides)
    configure_logging(level=settings.log_level, json=settings.log_json, cache_loggers=True)
    tracing.configure(settings.service_name, load_settings(TracingSettings))
    try:
        code = asyncio.run(_serve(settings.standin_host, settings.standin_port, settings.standin_record))
    finally:
        tracing.shutdown()
    raise SystemExit(code)


if __name__ == "__main__":
    main()
