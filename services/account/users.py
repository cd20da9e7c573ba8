"""The users snapshot (account.users): id and display name as last seen in a caller's token.

The port every domain calls, in its own transaction, on every authenticated write (so hosts can see their guests'
names); the only writer of account.users.
"""

from __future__ import annotations

from services.common.dbtypes import Conn
from services.common.domain_events import UserRenamed
from services.common.identity import User
from services.common.uow import UnitOfWork

# Returns a row when it inserted or changed one; ``renamed`` when it changed an existing name.
UPSERT_USER = """
WITH before AS (SELECT display_name FROM account.users WHERE id = $1)
INSERT INTO account.users (id, display_name) VALUES ($1, $2)
ON CONFLICT (id) DO UPDATE
    SET display_name = EXCLUDED.display_name, update_time = now()
    WHERE account.users.display_name IS DISTINCT FROM EXCLUDED.display_name
RETURNING EXISTS (SELECT 1 FROM before) AS renamed
"""


async def remember(tx: UnitOfWork, user: User) -> None:
    """Insert or refresh the caller's snapshot (a no-op write when nothing changed). A changed name emits
    :class:`UserRenamed`, so the caches showing it (the host's events and profile) drop it."""
    if await tx.conn.fetchval(UPSERT_USER, user.id, user.display_name[:200] or user.id):
        tx.emit(UserRenamed(user.id))


KNOWN_USERS = "SELECT id FROM account.users WHERE id = ANY($1::text[])"


async def known(conn: Conn, user_ids: list[str]) -> set[str]:
    """Which of ``user_ids`` cowatch has seen (they once called it with a token)."""
    return {r["id"] for r in await conn.fetch(KNOWN_USERS, user_ids)}
