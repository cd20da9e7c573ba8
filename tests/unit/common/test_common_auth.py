from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from services.common.auth import TokenVerifier, bearer_token, issue_token
from services.common.clock import ManualClock
from services.common.errors import Unauthenticated
from services.common.identity import User
from tests.unit.common.keys import AUDIENCE, HS_SECRET, ISSUER, KeyPair


def confused_token(public_pem: str) -> str:
    """An HS256 token whose HMAC key is the RSA public key PEM (what an attacker can compute)."""
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    claims = {"sub": "attacker", "iss": ISSUER, "aud": AUDIENCE, "exp": 4_000_000_000}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    signing_input = header + b"." + payload
    mac = hmac.new(public_pem.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


def reason_of(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token)
    assert token not in info.value.message
    return info.value.reason


def test_valid_hs256_token_gives_user_with_display_name(hs_verifier, hs_token):
    assert hs_verifier.verify(hs_token("u-42", name="Ada Lovelace")) == User("u-42", "Ada Lovelace")


def test_display_name_falls_back_to_preferred_username_then_sub(hs_verifier, hs_token):
    assert hs_verifier.verify(hs_token("u-1", preferred_username="ada")).display_name == "ada"
    assert hs_verifier.verify(hs_token("u-2")).display_name == "u-2"


def test_valid_rs256_token(rsa_keys: KeyPair):
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"], public_key=rsa_keys.public_pem)
    token = issue_token(subject="r1", issuer=ISSUER, audience=AUDIENCE, key=rsa_keys.private_pem, algorithm="RS256")
    assert verifier.verify(token).id == "r1"


def test_valid_es256_token(ec_keys: KeyPair):
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, algorithms=["ES256"], public_key=ec_keys.public_pem)
    token = issue_token(subject="e1", issuer=ISSUER, audience=AUDIENCE, key=ec_keys.private_pem, algorithm="ES256")
    assert verifier.verify(token).id == "e1"


def test_expired_token_is_token_expired(hs_verifier, hs_token):
    assert reason_of(hs_verifier, hs_token(expires_in=-120)) == "TOKEN_EXPIRED"


def test_expiry_uses_the_clock_and_leeway(hs_token):
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = ManualClock(start)
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, hs256_secret=HS_SECRET, leeway_seconds=30, clock=clock)
    token = hs_token(now=start, expires_in=60)
    assert verifier.verify(token).id == "user-1"
    clock.advance(85)  # past exp, within leeway: still accepted (and cached)
    assert verifier.verify(token).id == "user-1"
    clock.advance(10)  # beyond exp + leeway: the cached entry must not keep it alive
    assert reason_of(verifier, token) == "TOKEN_EXPIRED"


def test_wrong_issuer_and_audience_are_invalid(hs_verifier, hs_token):
    assert reason_of(hs_verifier, hs_token(issuer="https://evil.example/")) == "TOKEN_INVALID"
    assert reason_of(hs_verifier, hs_token(audience="someone-else")) == "TOKEN_INVALID"


def test_wrong_signature_is_invalid(hs_verifier, hs_token):
    forged = hs_token(key="another-secret-of-sufficient-length-000000")
    assert reason_of(hs_verifier, forged) == "TOKEN_INVALID"


def test_tampered_payload_is_invalid(hs_verifier, hs_token):
    header, payload, signature = hs_token("honest").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert reason_of(hs_verifier, f"{header}.{forged_payload}.{signature}") == "TOKEN_INVALID"


def test_alg_none_is_rejected(hs_verifier):
    claims = {"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "exp": 4_000_000_000}
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    assert reason_of(hs_verifier, unsigned) == "TOKEN_INVALID"
    assert reason_of(hs_verifier, unsigned + "c2lnbmF0dXJl") == "TOKEN_INVALID"


def test_hs256_token_signed_with_the_rsa_public_key_is_rejected(rsa_keys: KeyPair):
    # Algorithm confusion: the attacker knows the public key and uses it as an HMAC secret.
    verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"], public_key=rsa_keys.public_pem)
    assert reason_of(verifier, confused_token(rsa_keys.public_pem)) == "TOKEN_INVALID"


def test_confusion_also_fails_when_both_hs256_and_rs256_are_allowed(rsa_keys: KeyPair):
    verifier = TokenVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=["HS256", "RS256"],
        hs256_secret=HS_SECRET,
        public_key=rsa_keys.public_pem,
    )
    assert reason_of(verifier, confused_token(rsa_keys.public_pem)) == "TOKEN_INVALID"
    rs_token = issue_token(subject="ok", issuer=ISSUER, audience=AUDIENCE, key=rsa_keys.private_pem, algorithm="RS256")
    assert verifier.verify(rs_token).id == "ok"


def test_algorithm_not_allowed_is_rejected(rsa_keys: KeyPair, hs_token):
    rs_only = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"], public_key=rsa_keys.public_pem)
    assert reason_of(rs_only, hs_token()) == "TOKEN_INVALID"
    hs_only = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, hs256_secret=HS_SECRET)
    rs_token = issue_token(subject="x", issuer=ISSUER, audience=AUDIENCE, key=rsa_keys.private_pem, algorithm="RS256")
    assert reason_of(hs_only, rs_token) == "TOKEN_INVALID"
    hs512 = jwt.encode(
        {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": 4_000_000_000}, HS_SECRET * 2, algorithm="HS512"
    )
    assert reason_of(hs_only, hs512) == "TOKEN_INVALID"


@pytest.mark.parametrize("claim", ["sub", "exp", "iss", "aud"])
def test_missing_required_claim_is_invalid(hs_verifier, hs_token, claim):
    assert reason_of(hs_verifier, hs_token(extra_claims={claim: None})) == "TOKEN_INVALID"


@pytest.mark.parametrize("sub", ["", "   ", 42])
def test_unusable_sub_is_invalid(hs_verifier, hs_token, sub):
    assert reason_of(hs_verifier, hs_token(extra_claims={"sub": sub})) == "TOKEN_INVALID"


def test_not_yet_valid_token_is_invalid(hs_verifier, hs_token):
    future = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    assert reason_of(hs_verifier, hs_token(extra_claims={"nbf": future})) == "TOKEN_INVALID"


@pytest.mark.parametrize("garbage", ["not-a-jwt", "a.b.c", "x" * 9000])
def test_garbage_is_invalid(hs_verifier, garbage):
    assert reason_of(hs_verifier, garbage) == "TOKEN_INVALID"


def test_bearer_header_parsing(hs_verifier, hs_token):
    token = hs_token("u-9")
    assert bearer_token(f"Bearer {token}") == token
    assert bearer_token(f"bearer   {token} ") == token
    assert hs_verifier.authenticate(f"Bearer {token}").id == "u-9"
    with pytest.raises(Unauthenticated) as missing:
        bearer_token(None)
    assert missing.value.reason == "TOKEN_MISSING"
    with pytest.raises(Unauthenticated) as basic:
        bearer_token("Basic dXNlcjpwYXNz")
    assert basic.value.reason == "TOKEN_INVALID"


def test_verifier_refuses_inconsistent_configuration(rsa_keys: KeyPair, ec_keys: KeyPair):
    with pytest.raises(ValueError, match="secret"):
        TokenVerifier(issuer=ISSUER, audience=AUDIENCE, algorithms=["HS256"])
    with pytest.raises(ValueError, match="RSA"):
        TokenVerifier(issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"], public_key=ec_keys.public_pem)
    with pytest.raises(ValueError, match="subset"):
        TokenVerifier(issuer=ISSUER, audience=AUDIENCE, algorithms=["none"], hs256_secret=HS_SECRET)


def _at(now: datetime, **kwargs: object) -> TokenVerifier:
    return TokenVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        hs256_secret=HS_SECRET,
        clock=ManualClock(now),
        **kwargs,  # type: ignore[arg-type]
    )


def test_token_living_longer_than_the_maximum_is_refused(hs_token):
    now = datetime.now(UTC)
    verifier = _at(now, max_lifetime_seconds=3600, leeway_seconds=30)
    assert verifier.verify(hs_token("ok", now=now, expires_in=3600)).id == "ok"
    assert reason_of(verifier, hs_token("far", now=now, expires_in=3700)) == "TOKEN_INVALID"
    year_9999 = hs_token("y", now=now, extra_claims={"exp": 253_402_300_799})
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(year_9999)
    assert "lives too long" in info.value.message


def test_token_issued_in_the_future_is_refused(hs_token):
    now = datetime.now(UTC)
    verifier = _at(now, leeway_seconds=30)
    assert verifier.verify(hs_token("skew", now=now + timedelta(seconds=20))).id == "skew"
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(hs_token("future", now=now + timedelta(minutes=10)))
    assert (info.value.reason, "issued in the future" in info.value.message) == ("TOKEN_INVALID", True)


@pytest.mark.parametrize("sub", ["x" * 129, "a/b", "users/x", "tab\there", "nul\x00", "   "])
def test_subject_that_cannot_be_a_user_id_is_refused(hs_verifier, hs_token, sub: str):
    with pytest.raises(Unauthenticated) as info:
        hs_verifier.verify(hs_token(sub))
    assert info.value.reason == "TOKEN_INVALID" and "'sub'" in info.value.message


def test_longest_subject_and_unicode_subject_are_accepted(hs_verifier, hs_token):
    assert hs_verifier.verify(hs_token("x" * 128)).id == "x" * 128
    assert hs_verifier.verify(hs_token("jürgen@example.org")).id == "jürgen@example.org"


def test_control_characters_are_dropped_from_the_display_name(hs_verifier, hs_token):
    assert hs_verifier.verify(hs_token("u-9", name="Ada\x00 Love\nlace")).display_name == "Ada Lovelace"
