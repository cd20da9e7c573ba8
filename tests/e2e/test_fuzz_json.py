"""Schema-driven fuzzing of every RPC as HTTP/JSON through a real Envoy (grpc_json_transcoder) in front of the
services as processes: requests from tests/support/fuzz.py turned into their google.api.http routes, some with
mangled JSON, with the host's, a guest's, a stranger's and no token. Passes when no answer is HTTP 5xx and every
cluster is still healthy in Envoy's eyes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.api.test_fuzz_grpc import fuzz_settings
from tests.e2e.conftest import Gateway
from tests.e2e.test_gateway_envoy import event_json, http, post_json, unique_city
from tests.support.api import Caller, new_caller
from tests.support.fuzz import EXAMPLES, METHODS, Rpc, ValuePool, json_call, requests

BATCH = 8
ROLES = ("host", "guest", "stranger", "anonymous")


class JsonTarget:
    def __init__(self, gateway: Gateway, roles: dict[str, Caller | None], pool: ValuePool) -> None:
        self.gateway = gateway
        self.roles = roles
        roles_st = st.sampled_from(ROLES)
        mangle = st.none() | st.integers(0, 20)
        one = st.one_of([st.tuples(st.just(rpc), roles_st, requests(rpc, pool), mangle) for rpc in METHODS])
        self.batches = st.lists(one, min_size=BATCH, max_size=BATCH)
        self.statuses: dict[int, int] = {}
        self.calls = 0

    def call(self, rpc: Rpc, role: str, request: Any, mangle: int | None) -> tuple[int, bytes] | None:
        shaped = json_call(rpc, request, mangle)
        if shaped is None:
            return None
        method, path, body = shaped
        headers = {"content-type": "application/json"}
        caller = self.roles[role]
        if caller is not None:
            headers["authorization"] = f"Bearer {caller.token}"
        status, _, reply = http(method, f"{self.gateway.url}{path}", body, headers)
        self.calls += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status, reply


@pytest.fixture(scope="module")
def target(gateway: Gateway) -> JsonTarget:
    host, guest, stranger = new_caller("Fuzz Host"), new_caller("Fuzz Guest"), new_caller("Fuzz Stranger")
    status, _, body = post_json(f"{gateway.url}/v1/events", event_json(unique_city()), host)
    assert status == 200, body
    public = json.loads(body)
    status, _, body = post_json(f"{gateway.url}/v1/events", event_json(unique_city(), private=True), host)
    assert status == 200, body
    private = json.loads(body)
    status, _, body = post_json(f"{gateway.url}/v1/bookings", {"event": public["name"]}, guest)
    assert status == 200, body
    booking = json.loads(body)
    pool = ValuePool(
        names=[public["name"], private["name"], booking["name"]],
        users=[host.resource, guest.resource, stranger.resource],
        tokens=[private["inviteToken"], public["etag"]],
    )
    return JsonTarget(gateway, {"host": host, "guest": guest, "stranger": stranger, "anonymous": None}, pool)


@fuzz_settings(100)
@given(data=st.data())
def test_no_json_request_from_any_role_is_answered_5xx(target: JsonTarget, data: st.DataObject) -> None:
    batch = data.draw(target.batches)

    async def send() -> list[tuple[int, bytes] | None]:
        return await asyncio.gather(*(asyncio.to_thread(target.call, *item) for item in batch))

    answers = asyncio.run(send())
    bad = [
        (rpc.path, role, answer[0], answer[1][:200])
        for (rpc, role, _, _), answer in zip(batch, answers, strict=True)
        if answer is not None and answer[0] >= 500
    ]
    assert not bad, bad


def test_the_gateway_is_healthy_after_the_fuzzing(target: JsonTarget) -> None:
    print(f"fuzz/json: {target.calls} calls, HTTP statuses {dict(sorted(target.statuses.items()))}")
    assert target.calls >= BATCH * min(EXAMPLES or 100, 50) // 2
    status, _, body = http("GET", f"{target.gateway.url}/healthz")
    assert status == 200, body
    for replica in (*target.gateway.event_replicas, target.gateway.booking, target.gateway.review):
        replica.check_running()
