"""``python -m tests.bench`` (``make bench``): run every benchmark scenario, print one markdown table, write
``tests/bench/results/latest.md`` and ``latest.json``.

Environment:
  QUICK=1           a smoke run of every scenario, half-second windows (1–2 min; CI); its figures mean nothing.
  BENCH_ONLY=B4,B5  run only these scenario ids.
  BENCH_RESULTS_DIR where to write the results (default tests/bench/results).
  DATABASE_URL      a PostgreSQL server to create the bench databases on; unset, an embedded PostgreSQL is started
                    (test settings: fsync and synchronous_commit off — the same for cowatch and its baselines).
                    The rows and the footer say what the server reports (SHOW fsync, synchronous_commit).
  COWATCH_PG_DURABLE_TMPDIR  where the durable server of the ``-durable`` rows keeps its data (default /var/tmp;
                    must be a real disk: on tmpfs an fsync costs nothing). Unused when DATABASE_URL's server
                    itself commits durably: the durable rows then run on it too.

Each scenario gets a fresh migrated database (dropped afterwards). A scenario that needs a program this machine
lacks (B6: nginx) prints one SKIPPED row saying what to install. Exit status: 0 when every correctness counter is
0 (a missed performance goal or a skipped scenario is reported, not an error; under COWATCH_REQUIRE_TOOLS=1 a
skip counts as an error); 1 otherwise. The measuring rules: docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import pkgutil
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import asyncpg

from services.dev.embedded_pg import EmbeddedPostgres
from services.dev.migrate import drop_database
from tests.bench import scenarios
from tests.bench.harness import BenchContext, Row, ScenarioSkipped
from tests.support import tools
from tests.support.db import create_migrated_database

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_SCENARIO = re.compile(r"^b(\d+)_\w+$")
HEADER = ("id", "scenario", "cowatch", "baseline", "ratio", "goal", "notes")


def discover(only: set[str] | None = None) -> list[tuple[str, ModuleType]]:
    """Scenario modules ``b<N>_*`` in order of N (then name), optionally only ids in ``only``."""
    found: list[tuple[int, str]] = []
    for info in pkgutil.iter_modules(scenarios.__path__):
        match = _SCENARIO.match(info.name)
        if match:
            found.append((int(match.group(1)), info.name))
    out = []
    for number, name in sorted(found):
        if only is not None and f"B{number}" not in only:
            continue
        out.append((f"B{number}", importlib.import_module(f"{scenarios.__name__}.{name}")))
    return out


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[str, str]]:
    """(server URL, description): DATABASE_URL's server, or an embedded one for this run."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url, "PostgreSQL from DATABASE_URL"
        return
    with EmbeddedPostgres() as pg:
        yield pg.url, "embedded PostgreSQL"


DURABLE_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


async def durability(url: str) -> dict[str, str]:
    """The server's own word on its commit durability (never assumed from how it was started)."""
    conn = await asyncpg.connect(url)
    try:
        return {name: str(await conn.fetchval(f"SHOW {name}")) for name in DURABLE_SETTINGS}
    finally:
        await conn.close()


def describe(label: str, settings: dict[str, str]) -> str:
    return f"{label} (" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (tmpfs would make fsync free: worth saying)."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and str(path).startswith(fields[1]) and len(fields[1]) >= len(best):
                best, kind = fields[1], fields[2]
    return kind


class DurableServer:
    """The server of the durable rows (B4-durable, B5-durable): DATABASE_URL's server when it says it commits
    durably, else a second embedded PostgreSQL — the same binaries with fsync, synchronous_commit and
    full_page_writes on, its data on disk (not tmpfs, where an fsync costs nothing) — started the first time a
    scenario asks for it and removed at the end of the run."""

    def __init__(self, main_url: str, main_settings: dict[str, str], main_label: str) -> None:
        self._main_url = main_url
        self._main_settings = main_settings
        self._main_label = main_label
        self._pg: EmbeddedPostgres | None = None
        self._dir: Path | None = None
        self._answer: tuple[str, str] | None = None

    async def __call__(self) -> tuple[str, str]:
        if self._answer is not None:
            return self._answer
        if self._main_settings == DURABLE_SETTINGS:
            self._answer = (self._main_url, describe(self._main_label, self._main_settings))
            return self._answer
        base = Path(os.environ.get("COWATCH_PG_DURABLE_TMPDIR") or "/var/tmp")
        self._dir = Path(tempfile.mkdtemp(prefix="cowatch-pgdurable-", dir=base))
        # Started from the event loop's (main) thread on purpose: the server dies with the thread that started
        # it. Blocks the loop for the seconds initdb takes, between scenarios, when nothing is measured.
        self._pg = EmbeddedPostgres(self._dir / "data", test_mode=False, settings=dict(DURABLE_SETTINGS))
        self._pg.start()
        settings = await durability(self._pg.url)
        label = f"embedded PostgreSQL, durable, data on {filesystem_of(self._dir)}"
        self._answer = (self._pg.url, describe(label, settings))
        return self._answer

    @property
    def description(self) -> str | None:
        """What the durable rows ran on, or None when no scenario asked for it."""
        return self._answer[1] if self._answer is not None else None

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[Row], *, quick: bool, meta: dict[str, object]) -> str:
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "—"
        goal = r.goal + ("" if r.met is None else (" ✓" if r.met else " ✗ missed"))
        notes = r.notes
        if r.correctness:
            counters = ", ".join(f"{k}={v}" for k, v in r.correctness.items())
            notes += f" [correctness: {counters}{'' if r.correct else ' — MUST BE 0'}]"
        lines.append(
            "| " + " | ".join(_cell(c) for c in (r.id, r.scenario, r.cowatch, r.baseline, ratio, goal, notes)) + " |"
        )
    foot = f"\n_{meta['when']}, {meta['machine']}, {meta['postgres']}"
    foot += "; QUICK smoke run: figures are meaningless._\n" if quick else "._\n"
    return "\n".join(lines) + "\n" + foot


async def run_scenario(
    sid: str,
    module: ModuleType,
    server_url: str,
    pg_description: str,
    quick: bool,
    results_dir: Path,
    durable_server: DurableServer | None = None,
) -> list[Row]:
    name, url = await create_migrated_database(server_url, f"cowatch_bench_{sid.lower()}_{os.urandom(3).hex()}")
    ctx = BenchContext(
        database_url=url,
        quick=quick,
        results_dir=results_dir,
        pg_description=pg_description,
        durable_server=durable_server,
    )
    ctx.log(f"{sid}: {module.__name__}")
    started = time.perf_counter()
    try:
        rows: list[Row] = await module.run(ctx)
    except ScenarioSkipped as exc:
        print(f"{sid}: SKIPPED: {exc}", file=sys.stderr, flush=True)
        required = os.environ.get(tools.REQUIRE_ENV, "") not in ("", "0")
        rows = [
            Row(
                id=sid,
                scenario=module.__name__.rsplit(".", 1)[-1],
                cowatch="—",
                baseline="—",
                ratio=None,
                goal="—",
                met=None,
                notes=f"SKIPPED: {exc}",
                correctness={"missing_tool": 1} if required else {},
            )
        ]
    except Exception as exc:
        traceback.print_exc()
        rows = [
            Row(
                id=sid,
                scenario=module.__name__.rsplit(".", 1)[-1],
                cowatch="—",
                baseline="—",
                ratio=None,
                goal="—",
                met=False,
                notes=f"ERROR: {type(exc).__name__}: {exc}",
                correctness={"scenario_failed": 1},
            )
        ]
    finally:
        await drop_database(server_url, name)
    ctx.log(f"{sid}: done in {time.perf_counter() - started:.1f} s")
    return rows


async def main() -> int:
    quick = os.environ.get("QUICK", "").strip() not in ("", "0", "false", "no")
    only_env = os.environ.get("BENCH_ONLY", "").strip()
    only = {s.strip().upper() for s in only_env.split(",") if s.strip()} or None
    results_dir = Path(os.environ.get("BENCH_RESULTS_DIR") or RESULTS_DIR)
    results_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything is measured
    found = discover(only)
    if not found:
        print("no benchmark scenarios found", file=sys.stderr)
        return 1

    rows: list[Row] = []
    with postgres_server() as (server_url, pg_label):
        conn = await asyncpg.connect(server_url)
        try:
            pg_version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        main_settings = await durability(server_url)
        pg_description = describe(pg_label, main_settings)
        durable_server = DurableServer(server_url, main_settings, pg_label)
        try:
            for sid, module in found:
                rows += await run_scenario(sid, module, server_url, pg_description, quick, results_dir, durable_server)
        finally:
            durable_server.close()
        durable_description = durable_server.description

    meta: dict[str, object] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "postgres": f"{pg_description} {pg_version}"
        + (f"; durable rows on {durable_description}" if durable_description else ""),
        "quick": quick,
    }
    table = markdown(rows, quick=quick, meta=meta)
    print(table)
    (results_dir / "latest.md").write_text(table)
    (results_dir / "latest.json").write_text(
        json.dumps({"meta": meta, "rows": [r.as_json() for r in rows]}, indent=2, default=str) + "\n"
    )
    return 0 if all(r.correct for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
