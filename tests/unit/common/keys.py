"""Test key material and constants shared by the shared-runtime unit tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

ISSUER = "https://auth.cowatch.test/"
AUDIENCE = "cowatch-api"
HS_SECRET = "unit-test-secret-that-is-long-enough-0123456789"


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_pem: str


def pem_pair(private_key: Any) -> KeyPair:
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return KeyPair(private_pem, public_pem)
