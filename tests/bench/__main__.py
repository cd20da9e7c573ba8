"""``python -m tests.bench`` (``make bench``): run every benchmark scenario, print one markdown table, write
``tests/bench/results/latest.md`` and ``latest.json``.

Environment:
  QUICK=1           a seconds-long smoke run (CI); its figures mean nothing.
  BENCH_ONLY=B4,B5  run only these scenario ids.
  BENCH_RESULTS_DIR where to write the results (default tests/bench/results).
  DATABASE_URL      a PostgreSQL server to create the bench databases on; unset, an embedded PostgreSQL is started
                    (test settings: fsync and synchronous_commit off — the same for cowatch and its baselines).

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
import sys
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
        yield pg.url, "embedded PostgreSQL (fsync/synchronous_commit off)"


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
    sid: str, module: ModuleType, server_url: str, pg_description: str, quick: bool, results_dir: Path
) -> list[Row]:
    name, url = await create_migrated_database(server_url, f"cowatch_bench_{sid.lower()}_{os.urandom(3).hex()}")
    ctx = BenchContext(database_url=url, quick=quick, results_dir=results_dir, pg_description=pg_description)
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
    with postgres_server() as (server_url, pg_description):
        conn = await asyncpg.connect(server_url)
        try:
            pg_version = await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
        for sid, module in found:
            rows += await run_scenario(sid, module, server_url, pg_description, quick, results_dir)

    meta: dict[str, object] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "postgres": f"{pg_description} {pg_version}",
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
