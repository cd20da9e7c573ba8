"""The unit of work against the real database: the request id is claimed, replayed and recorded in the write's
transaction; events reach the in-transaction handlers before COMMIT and the after-commit handlers only once the
write is visible to others; a failed block leaves nothing behind and dispatches nothing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import pytest

from services.common.dbtypes import Conn
from services.common.errors import InvalidArgument
from services.common.idempotency import RequestKey
from services.common.uow import DomainEvent, Handlers, uow

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass(frozen=True)
class UserSeen(DomainEvent):
    user_id: str


def _key(request_id: uuid.UUID, payload: bytes = b"same") -> RequestKey:
    return RequestKey(caller_id="uow-test", method="Test", request_id=request_id, request_hash=payload)


class Probe:
    """Handlers that write in the transaction and, after COMMIT, look at the row from another connection."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.in_tx: list[str] = []
        self.seen_after_commit: list[tuple[str, bool]] = []
        self.rolled_back: list[str] = []

    def handlers(self) -> Handlers:
        async def write(conn: Conn, e: UserSeen, trace_id: str) -> None:
            self.in_tx.append(e.user_id)
            await conn.execute("INSERT INTO account.users (id, display_name) VALUES ($1, $2)", e.user_id, trace_id)

        async def check(e: UserSeen) -> None:
            async with self.pool.acquire() as other:
                found = await other.fetchval("SELECT display_name FROM account.users WHERE id = $1", e.user_id)
            self.seen_after_commit.append((e.user_id, found == "trace-1"))

        async def undone(e: UserSeen) -> None:
            self.rolled_back.append(e.user_id)

        return Handlers().on(UserSeen, in_transaction=write, after_commit=check, after_rollback=undone)


async def test_events_are_written_in_the_transaction_and_seen_by_others_after_commit(db_pool: asyncpg.Pool) -> None:
    probe = Probe(db_pool)
    user_id = f"uow-{uuid.uuid4().hex[:8]}"
    async with uow(db_pool, probe.handlers(), trace_id="trace-1") as tx:
        tx.emit(UserSeen(user_id))
        assert probe.in_tx == []  # dispatched when the block ends, still inside the transaction
    assert probe.in_tx == [user_id]
    assert probe.seen_after_commit == [(user_id, True)]
    assert probe.rolled_back == []


async def test_a_retry_replays_what_the_first_call_recorded_and_dispatches_nothing(db_pool: asyncpg.Pool) -> None:
    probe = Probe(db_pool)
    key = _key(uuid.uuid4())
    first = f"uow-{uuid.uuid4().hex[:8]}"
    async with uow(db_pool, probe.handlers(), request=key, trace_id="trace-1") as tx:
        assert tx.replay is None
        tx.emit(UserSeen(first))
        tx.record(f"users/{first}")
    async with uow(db_pool, probe.handlers(), request=key, trace_id="trace-1") as tx:
        assert tx.replay == f"users/{first}"
        tx.emit(UserSeen("never-written"))
    assert probe.in_tx == [first]
    with pytest.raises(InvalidArgument) as raised:
        async with uow(db_pool, probe.handlers(), request=_key(key.request_id, b"other")):
            pass
    assert raised.value.reason == "REQUEST_ID_REUSED"


async def test_a_block_failing_before_its_events_were_dispatched_hands_them_to_nobody(db_pool: asyncpg.Pool) -> None:
    probe = Probe(db_pool)
    with pytest.raises(RuntimeError):
        async with uow(db_pool, probe.handlers()) as tx:
            tx.emit(UserSeen(f"uow-{uuid.uuid4().hex[:8]}"))
            raise RuntimeError("refused before the dispatch")
    assert probe.in_tx == [] and probe.seen_after_commit == [] and probe.rolled_back == []


async def test_a_failed_block_rolls_back_its_claim_and_undoes_what_it_dispatched(db_pool: asyncpg.Pool) -> None:
    probe = Probe(db_pool)
    key = _key(uuid.uuid4())
    user_id = f"uow-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError):
        async with uow(db_pool, probe.handlers(), request=key, trace_id="trace-1") as tx:
            tx.emit(UserSeen(user_id))
            await tx.flush()  # written in the transaction...
            raise RuntimeError("refused after the write")
    assert probe.in_tx == [user_id] and probe.seen_after_commit == []
    assert probe.rolled_back == [user_id]  # what it did in the transaction (cache holds) is undone too
    async with db_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM account.users WHERE id = $1", user_id) == 0  # ...undone
    async with uow(db_pool, probe.handlers(), request=key) as tx:
        assert tx.replay is None  # the retry runs afresh
