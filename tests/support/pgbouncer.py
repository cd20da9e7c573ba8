"""A real PgBouncer (Debian's ``pgbouncer``) in transaction pooling, for tests that run cowatch behind it.

    bouncer = PgBouncer(server_url, {"cowatch_app": "cowatch_test_1a2b", "cowatch_worker": "cowatch_test_1a2b"},
                        workdir).start()
    bouncer.url("cowatch_app")      # postgresql://postgres@127.0.0.1:<port>/cowatch_app: what the processes get
    bouncer.show("STATS")           # the admin console's SHOW STATS, one dict per row

The settings are the repository's ``pgbouncer/pgbouncer.ini`` (what docker compose runs: transaction pooling, its
timeouts and limits), with what cannot carry over replaced: the address and port, the databases, authentication
and the pool sizes. Each alias is a ``[databases]`` entry pointing at one real database of ``server_url``; two
aliases on one database give two separate pools and two rows in ``SHOW STATS``, so a test can tell whose
transactions went through. Authentication is ``trust`` with the server URL's user in the auth file without a
password: meant for the trust-auth servers of the test suite (the shared one, the embedded ones). Started on a free
port (another on a lost race), it dies with the test process (parent-death signal) and keeps its log in
``<workdir>/pgbouncer.log``.
"""

from __future__ import annotations

import configparser
import csv
import io
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from services.dev.processes import free_port
from tests.support.envoy import _Process
from tests.support.tools import require

HOST: Final = "127.0.0.1"
ADMIN_DATABASE: Final = "pgbouncer"
SHIPPED_INI: Final = Path(__file__).resolve().parents[2] / "pgbouncer" / "pgbouncer.ini"


def read_ini(path: Path = SHIPPED_INI) -> configparser.ConfigParser:
    """PgBouncer's ini as a ConfigParser (``;`` comments, no interpolation, ``*`` allowed as a key)."""
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=(";", "#"), delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text(encoding="utf-8"))
    return parser


class PgBouncer(_Process):
    """``pgbouncer <ini>`` in transaction pooling, ``pool_size`` server connections per alias at most."""

    def __init__(
        self,
        server_url: str,
        databases: Mapping[str, str],
        workdir: Path,
        *,
        pool_size: int = 4,
    ) -> None:
        self.name = "pgbouncer"
        self.binary = require("pgbouncer", "the PgBouncer e2e test")
        self.psql = require("psql", "PgBouncer's admin console")
        server = urlsplit(server_url)
        self.user = server.username or "postgres"
        self.server_host = server.hostname or HOST
        self.server_port = server.port or 5432
        self.databases = dict(databases)
        self.pool_size = pool_size
        self.workdir = workdir
        self.log_path = workdir / "pgbouncer.log"
        self.port = 0

    def _write_config(self) -> Path:
        auth_file = self.workdir / "pgbouncer-users.txt"
        auth_file.write_text(f'"{self.user}" ""\n', encoding="utf-8")
        entries = [
            f"{alias} = host={self.server_host} port={self.server_port} dbname={real}"
            for alias, real in self.databases.items()
        ]
        settings = dict(read_ini()["pgbouncer"])
        settings.update(
            {
                "listen_addr": HOST,
                "listen_port": str(self.port),
                "unix_socket_dir": "",  # TCP only: nothing left in /tmp, no clash with the box's own sockets
                "auth_type": "trust",
                "auth_file": str(auth_file),
                "admin_users": self.user,
                "stats_users": self.user,
                # small pools, no reserve: the test counts server connections against them
                "default_pool_size": str(self.pool_size),
                "reserve_pool_size": "0",
            }
        )
        if os.geteuid() == 0:
            settings["user"] = "nobody"  # PgBouncer refuses to run as root; it reads its files before switching
        ini = self.workdir / "pgbouncer.ini"
        lines = ["[databases]", *entries, "", "[pgbouncer]", *(f"{k} = {v}" for k, v in settings.items())]
        ini.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return ini

    def start(self, timeout: float = 15.0, attempts: int = 5) -> PgBouncer:
        for attempt in range(attempts):
            self.port = free_port()
            ini = self._write_config()
            self._spawn([self.binary, str(ini)])
            deadline = time.monotonic() + timeout
            while self.running and time.monotonic() < deadline:
                if self._answers():
                    return self
                time.sleep(0.05)
            lost_race = "Address already in use" in self.log_tail(5)
            self.stop(5)
            if not lost_race or attempt + 1 == attempts:
                raise RuntimeError(f"pgbouncer did not come up on port {self.port}\n{self.log_tail()}")
        raise AssertionError("unreachable")

    def _answers(self) -> bool:
        try:
            self.show("VERSION")
        except RuntimeError:
            return False
        return True

    def url(self, alias: str) -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{alias}"

    def show(self, what: str) -> list[dict[str, str]]:
        """``SHOW <what>`` on the admin console (simple query protocol only, hence psql), rows as dicts."""
        done = subprocess.run(
            [self.psql, "-X", "--csv", "-h", HOST, "-p", str(self.port), "-U", self.user, "-d", ADMIN_DATABASE],
            input=f"SHOW {what};",
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "2"},
        )
        if done.returncode != 0:
            raise RuntimeError(f"SHOW {what} failed: {done.stderr.strip()}")
        return list(csv.DictReader(io.StringIO(done.stdout)))

    def stats(self, alias: str) -> dict[str, int]:
        """The ``SHOW STATS`` row of ``alias``: totals since start (``total_xact_count``, ``total_query_count``...)."""
        for row in self.show("STATS"):
            if row["database"] == alias:
                return {k: int(v) for k, v in row.items() if k != "database"}
        return {}
