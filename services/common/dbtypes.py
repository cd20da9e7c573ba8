"""The database types, one alias per concept: :data:`Conn` is "a connection" as repositories accept it (a plain one
or one checked out of a pool), :data:`Pool` the process's pool. Everything else spells them through these."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
