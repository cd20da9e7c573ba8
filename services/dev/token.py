"""Dev bearer tokens for the ``make run`` stack.

``make run`` starts every service with the dev JWT configuration below (HS256, issuer and audience
``cowatch-dev``) unless the environment already sets ``COWATCH_JWT_*``; this module signs tokens for that same
configuration, read from the same environment, so they are accepted as long as both agree.

    .venv/bin/python -m services.dev.token                          # sub dev-user, name "Dev User", 24 h
    .venv/bin/python -m services.dev.token --sub guest-user --name "Guest User" --ttl 3600

Never use the dev secret anywhere but on a developer's machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from datetime import timedelta
from typing import Final

from services.common.auth import issue_token
from services.common.settings import ENV_PREFIX

__all__ = [
    "DEV_AUDIENCE",
    "DEV_HS256_SECRET",
    "DEV_ISSUER",
    "DevTokenError",
    "dev_auth_env",
    "issue_dev_token",
    "main",
]

DEV_ISSUER: Final = "cowatch-dev"
DEV_AUDIENCE: Final = "cowatch-dev"
DEV_HS256_SECRET: Final = "cowatch-dev-secret-for-make-run-only-never-in-production"
DEFAULT_TTL: Final = timedelta(hours=24)

DEV_USER: Final = ("dev-user", "Dev User")
GUEST_USER: Final = ("guest-user", "Guest User")


class DevTokenError(RuntimeError):
    """The environment's JWT configuration cannot be signed for here (no HS256 secret)."""


def dev_auth_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``COWATCH_JWT_*`` variables the stack runs with: the environment's values, else the dev defaults."""
    env = os.environ if environ is None else environ
    defaults = {
        f"{ENV_PREFIX}JWT_ALGORITHMS": "HS256",
        f"{ENV_PREFIX}JWT_ISSUER": DEV_ISSUER,
        f"{ENV_PREFIX}JWT_AUDIENCE": DEV_AUDIENCE,
        f"{ENV_PREFIX}JWT_HS256_SECRET": DEV_HS256_SECRET,
        # the dev secret is refused by a production-configured process
        f"{ENV_PREFIX}ENVIRONMENT": "development",
    }
    # Empty values count as unset, as in the services' settings (env_ignore_empty).
    return {name: env.get(name) or default for name, default in defaults.items()}


def issue_dev_token(
    subject: str = DEV_USER[0],
    name: str | None = DEV_USER[1],
    *,
    ttl: timedelta = DEFAULT_TTL,
    environ: Mapping[str, str] | None = None,
) -> str:
    """An HS256 token for ``subject`` that the ``make run`` services accept."""
    auth = dev_auth_env(environ)
    algorithms = {a.strip().upper() for a in auth[f"{ENV_PREFIX}JWT_ALGORITHMS"].split(",")}
    if "HS256" not in algorithms:
        raise DevTokenError(
            f"{ENV_PREFIX}JWT_ALGORITHMS={auth[f'{ENV_PREFIX}JWT_ALGORITHMS']} does not allow HS256: "
            "sign tokens with your own key instead"
        )
    return issue_token(
        subject=subject,
        issuer=auth[f"{ENV_PREFIX}JWT_ISSUER"],
        audience=auth[f"{ENV_PREFIX}JWT_AUDIENCE"],
        key=auth[f"{ENV_PREFIX}JWT_HS256_SECRET"],
        name=name,
        expires_in=ttl,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print a bearer token the `make run` stack accepts.")
    parser.add_argument("--sub", default=DEV_USER[0], help=f"user id (default {DEV_USER[0]})")
    parser.add_argument("--name", default=None, help=f'display name (default "{DEV_USER[1]}" for {DEV_USER[0]})')
    parser.add_argument("--ttl", type=float, default=DEFAULT_TTL.total_seconds(), help="lifetime in seconds")
    args = parser.parse_args(argv)
    name = args.name if args.name is not None else (DEV_USER[1] if args.sub == DEV_USER[0] else None)
    try:
        print(issue_dev_token(args.sub, name, ttl=timedelta(seconds=args.ttl)))
    except DevTokenError as exc:
        print(f"services.dev.token: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
