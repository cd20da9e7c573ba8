"""``python -m tests.chaos`` (``make chaos``; ``QUICK=1`` for the short run ``make test`` uses).

Starts its own stack (tests/chaos/stack.py), runs every scenario in turn (``CHAOS_ONLY=redis,worker`` picks by
function-name substring), prints one markdown table (a row as each scenario ends) and writes it to
``tests/chaos/results/latest.md`` and ``latest.json`` (``CHAOS_RESULTS_DIR`` moves them; ``CHAOS_LOG_DIR`` keeps
the processes' logs). Exits 1 if any row
lost, duplicated or oversold anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.chaos.scenarios import HEADER, RULE, SCENARIOS, Chaos, Row, markdown, markdown_row
from tests.chaos.stack import ChaosStack

RESULTS_DIR = Path(__file__).resolve().parent / "results"


async def run(quick: bool, only: list[str], workdir: Path) -> list[Row]:
    t0 = time.monotonic()
    stack = await ChaosStack.start(workdir)
    print(f"stack up in {time.monotonic() - t0:.1f}s (logs in {workdir})", file=sys.stderr, flush=True)
    rows: list[Row] = []
    print(f"{HEADER}\n{RULE}", flush=True)  # each scenario's row as soon as it is known
    try:
        chaos = Chaos(stack, quick=quick)
        for scenario in SCENARIOS:
            if only and not any(o in scenario.__name__ for o in only):
                continue
            t = time.monotonic()
            row = await scenario(chaos)
            stack.check_running()
            rows.append(row)
            print(markdown_row(row), flush=True)
            print(f"{scenario.__name__}: {time.monotonic() - t:.1f}s", file=sys.stderr, flush=True)
    finally:
        await stack.close()
    return rows


def main() -> int:
    quick = os.environ.get("QUICK", "") not in ("", "0")
    only = [s for s in os.environ.get("CHAOS_ONLY", "").split(",") if s]
    results = Path(os.environ.get("CHAOS_RESULTS_DIR") or RESULTS_DIR)
    results.mkdir(parents=True, exist_ok=True)
    keep = os.environ.get("CHAOS_LOG_DIR")  # keep the processes' logs there instead of a temporary directory
    with tempfile.TemporaryDirectory(prefix="cowatch-chaos-") as scratch:
        tmp = keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        try:
            rows = asyncio.run(run(quick, only, Path(tmp)))
        except BaseException:
            for log in sorted(Path(tmp).glob("*.log")):
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                print(f"--- {log.name} ---\n{tail}", file=sys.stderr)
            raise
    table = markdown(rows)
    (results / "latest.md").write_text(table, encoding="utf-8")
    meta = {"quick": quick, "finished": datetime.now(UTC).isoformat()}
    payload = {"meta": meta, "rows": [r.as_json() for r in rows]}
    (results / "latest.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 0 if all(r.correct for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
