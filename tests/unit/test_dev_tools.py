"""Developer tooling that needs no processes: make run's restart back-off, the port-retry start loop, and the
missing-program helper's skip line and CI switch."""

from __future__ import annotations

import pytest

from services.dev.children import Backoff
from services.dev.processes import PortInUse, start_on_free_port
from tests.support import tools


def test_backoff_doubles_to_its_cap_and_starts_over_after_a_stable_run() -> None:
    backoff = Backoff(first=1.0, cap=8.0, stable_after=30.0)
    assert [backoff.delay(ran_for=0.5) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.delay(ran_for=31.0) == 1.0  # it ran fine for a while: a crash, not a crash loop
    assert backoff.delay(ran_for=0.5) == 2.0


def test_port_retry_picks_another_port_only_when_none_was_given() -> None:
    tried: list[int] = []

    def start(port: int) -> None:
        tried.append(port)
        if len(tried) < 3:
            raise PortInUse

    port = start_on_free_port(start, None)
    assert len(tried) == 3 and port == tried[-1]

    tried.clear()
    with pytest.raises(PortInUse):
        start_on_free_port(start, 12345)  # a port the caller chose is kept: one attempt
    assert tried == [12345]


def test_a_hidden_tool_is_missing_and_skips_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tools.HIDE_ENV, "nginx,node")
    monkeypatch.delenv(tools.REQUIRE_ENV, raising=False)
    assert tools.find("nginx") is None and tools.find("node") is None
    with pytest.raises(pytest.skip.Exception) as skipped:
        tools.require("nginx", "the gateway tests")
    line = str(skipped.value)
    assert "\n" not in line
    assert line.startswith("needs nginx for the gateway tests: apt-get install nginx")

    monkeypatch.setenv(tools.REQUIRE_ENV, "1")  # CI: a missing program fails instead
    with pytest.raises(pytest.fail.Exception, match="needs node: apt-get install nodejs"):
        tools.require("node")
