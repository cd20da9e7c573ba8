"""The benchmark runner in QUICK mode, so CI exercises every scenario end to end (its figures mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# The smoke run starts a service process per measured row (and, on a server with fsync off, a second, durable
# PostgreSQL): about two minutes on an idle 2-core box, several times that when the box is shared.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_quick_bench_runs_every_scenario_and_counts_no_errors(pg_server_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "QUICK": "1", "BENCH_RESULTS_DIR": str(tmp_path), "DATABASE_URL": pg_server_url}
    env.pop("BENCH_ONLY", None)
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=570,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["meta"]["quick"] is True
    rows = {row["id"]: row for row in results["rows"]}
    assert {"B4", "B4-durable", "B5", "B5-durable", "B7"} <= set(rows)
    # The durable rows ran on a server that says it commits durably, whatever the main server does.
    for durable in ("B4-durable", "B5-durable"):
        assert "fsync=on, synchronous_commit=on" in rows[durable]["data"]["postgres"], rows[durable]
    for row in rows.values():
        assert row["correct"], row
    # One markdown table, id first, written and printed.
    table = (tmp_path / "latest.md").read_text()
    assert table.splitlines()[0] == "| id | scenario | cowatch | baseline | ratio | goal | notes |"
    assert "| B4 |" in table and "| B5 |" in table and "| B4-durable |" in table and "| B7 |" in table
    assert "| B4 |" in done.stdout
