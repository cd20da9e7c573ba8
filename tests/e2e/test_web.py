"""The TypeScript SDK (``node --test``) and the web page (playwright-core driving Chromium) against ``make run``.

Both talk gRPC-web to Envoy on the page's own origin, through the real services and PostgreSQL. Screenshots of the
walk-through are kept in tests/artifacts/web/ (git-ignored). Skipped with one line when Node or Chromium is
missing (.ci/run installs both).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from services.dev.token import issue_dev_token
from tests.support.web import ARTIFACTS, TS_SDK, WEB, DevStack, dev_stack, npm_ci, require_chromium, require_node

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def stack(database_url: str) -> Iterator[DevStack]:
    require_node()
    with dev_stack(database_url) as running:
        yield running


def _report(what: str, result: subprocess.CompletedProcess[str] | str) -> str:
    text = result if isinstance(result, str) else f"{result.stdout}\n{result.stderr}"
    return f"{what} failed:\n{text[-12000:]}"


def test_typescript_sdk_against_the_stack(stack: DevStack) -> None:
    npm_ci(TS_SDK)
    build = subprocess.run(["npm", "run", "--silent", "build"], cwd=TS_SDK, capture_output=True, text=True)
    assert build.returncode == 0, _report("npm run build (sdk/typescript)", build)
    users = {role: f"sdk-{role}-{uuid.uuid4().hex[:8]}" for role in ("host", "guest", "third")}
    env = {
        "COWATCH_API_URL": stack.url,
        **{f"{role.upper()}_TOKEN": issue_dev_token(user, f"SDK {role}") for role, user in users.items()},
    }
    result = subprocess.run(
        ["node", "--test", "--test-reporter=spec", "test/"],
        cwd=TS_SDK,
        env={**_node_env(), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    print(result.stdout)
    assert result.returncode == 0, _report("node --test (sdk/typescript)", result)
    assert "# fail 0" in result.stdout or "ℹ fail 0" in result.stdout, result.stdout


def test_browser_walkthrough(stack: DevStack) -> None:
    chromium = require_chromium()
    npm_ci(WEB)
    artifacts = ARTIFACTS / "web"
    env = {**_node_env(), "COWATCH_WEB_URL": stack.url, "CHROMIUM": chromium, "ARTIFACTS": str(artifacts)}
    proc = subprocess.Popen(
        ["node", "e2e/walkthrough.mjs"],
        cwd=WEB,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert proc.stdin is not None and proc.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + 300
    try:
        for line in proc.stdout:
            output.append(line.rstrip("\n"))
            print(line, end="")
            if line.startswith("NEED ended "):
                asyncio.run(_move_into_the_past(stack.database_url, line.split()[-1]))
                proc.stdin.write("ok\n")
                proc.stdin.flush()
            assert time.monotonic() < deadline, "walk-through took more than 300 s"
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    transcript = "\n".join(output)
    assert code == 0, _report(f"the walk-through (exit {code}; screenshots in {artifacts})", transcript)
    assert "DONE" in output, transcript
    metrics = [json.loads(line.split(" ", 1)[1]) for line in output if line.startswith("METRIC ")]
    assert metrics and metrics[0]["first_contentful_paint_ms"] is not None, transcript
    assert (artifacts / "05-sold-out.png").is_file()


async def _move_into_the_past(database_url: str, event_name: str) -> None:
    """The event started 3 h ago and ended 1 h ago, so the host can mark it held without the test waiting."""
    event_id = uuid.UUID(event_name.removeprefix("events/"))
    conn = await asyncpg.connect(database_url)
    try:
        status = await conn.execute(
            "UPDATE event.events SET start_time = now() - interval '3 hours', end_time = now() - interval '1 hour'"
            " WHERE id = $1",
            event_id,
        )
        assert status == "UPDATE 1", status
    finally:
        await conn.close()


def _node_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COWATCH_")}
