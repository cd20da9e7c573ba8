"""Fixtures for the shared-runtime unit tests: keys, tokens, verifiers (no I/O beyond loopback gRPC)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.common.auth import TokenVerifier, issue_token
from tests.unit.common.keys import AUDIENCE, HS_SECRET, ISSUER, KeyPair, pem_pair


@pytest.fixture(scope="session")
def rsa_keys() -> KeyPair:
    return pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="session")
def ec_keys() -> KeyPair:
    return pem_pair(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def hs_verifier() -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, algorithms=["HS256"], hs256_secret=HS_SECRET)


@pytest.fixture
def hs_token() -> Callable[..., str]:
    def make(subject: str = "user-1", **kwargs: Any) -> str:
        kwargs.setdefault("issuer", ISSUER)
        kwargs.setdefault("audience", AUDIENCE)
        kwargs.setdefault("key", HS_SECRET)
        return issue_token(subject=subject, **kwargs)

    return make
