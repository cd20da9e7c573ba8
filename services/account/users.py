"""The users snapshot (account.users): id and display name as last seen in a caller's token.

The port every domain calls, in its own transaction, on every authenticated write (so hosts can see their guests'
names); the only writer of account.users.
"""

from __future__ import annotations

from services.common.dbtypes import Conn
from services.common.identity import User

UPSERT_USER = """
INSERT INTO account.users (id, display_name) VALUES ($1, $2)
ON CONFLICT (id) DO UPDATE
    SET display_name = EXCLUDED.display_name, update_time = now()
    WHERE account.users.display_name IS DISTINCT FROM EXCLUDED.display_name
"""


async def remember(conn: Conn, user: User) -> None:
    """Insert or refresh the caller's snapshot (a no-op write when nothing changed)."""
    await conn.execute(UPSERT_USER, user.id, user.display_name[:200] or user.id)


KNOWN_USERS = "SELECT id FROM account.users WHERE id = ANY($1::text[])"


async def known(conn: Conn, user_ids: list[str]) -> set[str]:
    """Which of ``user_ids`` cowatch has seen (they once called it with a token)."""
    return {r["id"] for r in await conn.fetch(KNOWN_USERS, user_ids)}
