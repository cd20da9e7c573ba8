"""Programs some tests need that pip cannot install (NGINX, redis-server, PgBouncer, psql, Chromium, Node.js, kubectl,
promtool): find them, skip the tests that need a missing one with one line saying what to install, and install them
where that is possible.

    from tests.support.tools import require
    nginx = require("nginx")          # the path, or the test is skipped: "needs nginx: apt-get install nginx"

    .venv/bin/python -m tests.support.tools check              # what is there, what is missing
    .venv/bin/python -m tests.support.tools install nginx ...  # as root with apt-get: install the missing ones

``COWATCH_HIDE_TOOLS=nginx,redis-server`` makes the named tools look missing (to try the skip path on a machine
that has them). ``COWATCH_REQUIRE_TOOLS=1`` (set by CI) turns every such skip into a failure, so CI cannot pass
with a test quietly skipped for a missing tool.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

HIDE_ENV: Final = "COWATCH_HIDE_TOOLS"
REQUIRE_ENV: Final = "COWATCH_REQUIRE_TOOLS"
POLICY_RC_D: Final = Path("/usr/sbin/policy-rc.d")


@dataclass(frozen=True)
class Tool:
    name: str
    apt_package: str
    also_look_in: tuple[str, ...] = ()
    """Directories outside a normal user's PATH where the package puts the program (nginx: /usr/sbin)."""

    @property
    def install_hint(self) -> str:
        return f"apt-get install {self.apt_package}"


TOOLS: Final = {
    tool.name: tool
    for tool in (
        Tool("nginx", "nginx", ("/usr/sbin",)),
        Tool("redis-server", "redis-server"),
        Tool("chromium", "chromium"),
        Tool("node", "nodejs"),
        # kubectl's built-in kustomize renders deploy/k8s offline (tests/deploy/test_k8s.py); the suite needs one with
        # kustomize v4 or later (kubectl 1.21+). Debian packages kubectl as kubernetes-client.
        Tool("kubectl", "kubernetes-client"),
        # promtool checks and unit-tests deploy/observability's alert rules (tests/deploy/test_observability.py).
        Tool("promtool", "prometheus"),
        Tool("pgbouncer", "pgbouncer", ("/usr/sbin",)),
        Tool("psql", "postgresql-client"),  # PgBouncer's admin console speaks only the simple query protocol
    )
}
# What `make test` installs when it can; CI installs every tool in TOOLS.
TEST_TOOLS: Final = ("nginx", "redis-server", "pgbouncer", "psql", "kubectl", "promtool")


def _hidden() -> set[str]:
    return {name.strip() for name in os.environ.get(HIDE_ENV, "").split(",") if name.strip()}


def find(name: str) -> str | None:
    """The path of the program ``name`` (one of :data:`TOOLS`), or None when it is missing (or hidden)."""
    tool = TOOLS[name]
    if name in _hidden():
        return None
    found = shutil.which(name)
    if found:
        return found
    for directory in tool.also_look_in:
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_line(name: str, needed_for: str = "") -> str:
    """One line: what is missing, what it is needed for, how to get it."""
    tool = TOOLS[name]
    purpose = f" for {needed_for}" if needed_for else ""
    return f"needs {name}{purpose}: {tool.install_hint} (`make tools` installs it when run as root; CI always does)"


def require(name: str, needed_for: str = "") -> str:
    """The program's path; when it is missing, the calling test is skipped with :func:`missing_line` (or fails,
    under ``COWATCH_REQUIRE_TOOLS=1``). Call it from a test or a fixture."""
    found = find(name)
    if found is not None:
        return found
    _missing(missing_line(name, needed_for))


def _missing(line: str) -> NoReturn:
    import pytest

    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{line} [{REQUIRE_ENV} is set: missing tools fail the run]", pytrace=False)
    pytest.skip(line)


def install(names: list[str]) -> int:
    """Install the missing tools among ``names`` with apt-get, when this is root on a machine with apt-get;
    otherwise print what to install. Packages must not start system daemons (the tests start their own
    instances): a temporary policy-rc.d forbids it, unless the machine already has one. Returns 0 unless an
    installation was attempted and failed."""
    missing = [TOOLS[name] for name in names if find(name) is None and name not in _hidden()]
    if not missing:
        return 0
    packages = sorted({tool.apt_package for tool in missing})
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        why = "not root" if os.geteuid() != 0 else "no apt-get"
        for tool in missing:
            print(f"tools: {tool.name} is missing ({why}: `sudo {tool.install_hint}`); tests needing it are skipped")
        return 0
    print(f"tools: apt-get install {' '.join(packages)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    own_policy = not POLICY_RC_D.exists()
    try:
        if own_policy:
            POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
            POLICY_RC_D.chmod(0o755)
        for argv in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "--no-install-recommends", *packages]):
            done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"tools: {' '.join(argv[1:3])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
                return 1
    finally:
        if own_policy:
            POLICY_RC_D.unlink(missing_ok=True)
    still = [tool.name for tool in missing if find(tool.name) is None]
    if still:
        print(f"tools: still missing after apt-get: {', '.join(still)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.tools", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="list the tools, found or missing")
    inst = sub.add_parser("install", help="install the missing ones (root + apt-get), else say what to install")
    inst.add_argument("names", nargs="*", help=f"among {', '.join(TOOLS)} (default: {' '.join(TEST_TOOLS)})")
    inst.add_argument("--all", action="store_true", help="every known tool")
    args = parser.parse_args(argv)
    if args.command == "check":
        for name in TOOLS:
            found = find(name)
            print(f"{name:<13} {found or 'MISSING — ' + TOOLS[name].install_hint}")
        return 0
    names = list(TOOLS) if args.all else (args.names or list(TEST_TOOLS))
    unknown = sorted(set(names) - set(TOOLS))
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(TOOLS)}")
    return install(names)


if __name__ == "__main__":
    sys.exit(main())
