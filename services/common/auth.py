"""JWT bearer-token verification (PyJWT).

Security rules:

* Only allow-listed algorithms (HS256 / RS256 / ES256, from configuration) are accepted; ``none`` and
  everything else is rejected before any cryptography runs.
* Each algorithm is bound to its own key: HS256 to the shared secret, RS256 to the RSA public key, ES256 to
  the P-256 public key, and PyJWT is called with exactly one algorithm and its key. An HS256 token "signed"
  with the RSA public key as an HMAC secret (the classic algorithm-confusion attack) therefore fails.
* ``exp``, ``iss``, ``aud`` and ``sub`` are required; ``exp``/``nbf``/``iat`` are checked against the injected
  clock with a leeway: a token issued in the future, or expiring further ahead than ``max_lifetime_seconds``
  (``COWATCH_JWT_MAX_LIFETIME_SECONDS``), is refused, so a leaked long-lived token is worthless.
* ``sub`` must be a user id cowatch can store and name (``users/{sub}``: at most 128 printable characters, no
  ``/``); anything else is refused here, never at the database.

Errors are :class:`~services.common.errors.Unauthenticated` with reason ``TOKEN_MISSING``, ``TOKEN_INVALID``
or ``TOKEN_EXPIRED``. Messages never contain the token.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from services.common.clock import Clock, SystemClock
from services.common.errors import Unauthenticated
from services.common.identity import MAX_USER_ID_LENGTH, User, valid_user_id

if TYPE_CHECKING:
    from services.common.settings import CommonSettings

__all__ = [
    "ALLOWED_ALGORITHMS",
    "MAX_TOKEN_LENGTH",
    "TokenVerifier",
    "bearer_token",
    "issue_token",
]

ALLOWED_ALGORITHMS: Final = frozenset({"HS256", "RS256", "ES256"})
MAX_TOKEN_LENGTH: Final = 8192
MAX_DISPLAY_NAME_LENGTH: Final = 200
_CACHE_SIZE: Final = 4096

TOKEN_MISSING: Final = "TOKEN_MISSING"
TOKEN_INVALID: Final = "TOKEN_INVALID"
TOKEN_EXPIRED: Final = "TOKEN_EXPIRED"


def _invalid(message: str = "invalid bearer token") -> Unauthenticated:
    return Unauthenticated(TOKEN_INVALID, message)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``authorization: Bearer <token>`` value.

    Raises ``TOKEN_MISSING`` when absent/empty and ``TOKEN_INVALID`` when the scheme is not Bearer.
    """
    if authorization is None or not authorization.strip():
        raise Unauthenticated(TOKEN_MISSING, "missing bearer token in the authorization metadata")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _invalid("authorization metadata must be 'Bearer <token>'")
    token = token.strip()
    if not token:
        raise Unauthenticated(TOKEN_MISSING, "missing bearer token in the authorization metadata")
    return token


class TokenVerifier:
    """Verifies bearer JWTs and turns them into :class:`User` values.

    Verified tokens are cached (bounded LRU keyed by the token string, re-checked against ``exp`` on
    every hit), so a client reusing its token does not pay for an RSA/ECDSA verification per call.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        algorithms: Iterable[str] = ("HS256",),
        hs256_secret: str | bytes | None = None,
        public_key: str | bytes | None = None,
        leeway_seconds: float = 30.0,
        max_lifetime_seconds: float = 86_400.0,
        clock: Clock | None = None,
        cache_size: int = _CACHE_SIZE,
    ) -> None:
        algs = tuple(dict.fromkeys(algorithms))
        unknown = [a for a in algs if a not in ALLOWED_ALGORITHMS]
        if unknown or not algs:
            raise ValueError(f"algorithms must be a non-empty subset of {sorted(ALLOWED_ALGORITHMS)}, got {algs}")
        self._issuer = issuer
        self._audience = audience
        self._leeway = float(leeway_seconds)
        self._max_lifetime = float(max_lifetime_seconds)
        self._clock: Clock = clock or SystemClock()
        self._keys: dict[str, Any] = {}
        if "HS256" in algs:
            if not hs256_secret:
                raise ValueError("HS256 is allowed but no secret was given")
            self._keys["HS256"] = hs256_secret.encode() if isinstance(hs256_secret, str) else hs256_secret
        asymmetric = [a for a in algs if a in {"RS256", "ES256"}]
        if asymmetric:
            if not public_key:
                raise ValueError(f"{'/'.join(asymmetric)} allowed but no public key was given")
            key = load_pem_public_key(public_key.encode() if isinstance(public_key, str) else public_key)
            for alg in asymmetric:
                if alg == "RS256" and not isinstance(key, rsa.RSAPublicKey):
                    raise ValueError("RS256 is allowed but the public key is not an RSA key")
                if alg == "ES256" and not isinstance(key, ec.EllipticCurvePublicKey):
                    raise ValueError("ES256 is allowed but the public key is not an EC key")
                self._keys[alg] = key
        self._cache: OrderedDict[str, tuple[User, float]] = OrderedDict()
        self._cache_size = cache_size

    @classmethod
    def from_settings(cls, settings: CommonSettings, *, clock: Clock | None = None) -> TokenVerifier:
        secret = settings.jwt_hs256_secret.get_secret_value() if settings.jwt_hs256_secret else None
        return cls(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            algorithms=settings.jwt_algorithms,
            hs256_secret=secret,
            public_key=settings.jwt_public_key,
            leeway_seconds=settings.jwt_leeway_seconds,
            max_lifetime_seconds=settings.jwt_max_lifetime_seconds,
            clock=clock,
        )

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def authenticate(self, authorization: str | None) -> User:
        """Verify an ``authorization`` metadata value (``Bearer <jwt>``)."""
        return self.verify(bearer_token(authorization))

    def verify(self, token: str) -> User:
        if not token:
            raise Unauthenticated(TOKEN_MISSING, "missing bearer token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _invalid("bearer token too long")
        now = self._clock.now().timestamp()
        cached = self._cache.get(token)
        if cached is not None:
            user, exp = cached
            if now <= exp + self._leeway:
                self._cache.move_to_end(token)
                return user
            del self._cache[token]
            raise Unauthenticated(TOKEN_EXPIRED, "bearer token expired")

        user, exp = self._verify_uncached(token, now)
        self._cache[token] = (user, exp)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return user

    def _verify_uncached(self, token: str, now: float) -> tuple[User, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("malformed bearer token") from None
        alg = header.get("alg")
        key = self._keys.get(alg) if isinstance(alg, str) else None
        if key is None or not isinstance(alg, str):
            raise _invalid("bearer token signed with an algorithm that is not allowed")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],  # exactly the one algorithm this key belongs to
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    # time claims are checked below against the injected clock
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"bearer token lacks the '{exc.claim}' claim") from None
        except jwt.InvalidAudienceError:
            raise _invalid("bearer token audience mismatch") from None
        except jwt.InvalidIssuerError:
            raise _invalid("bearer token issuer mismatch") from None
        except jwt.PyJWTError:
            raise _invalid() from None

        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise _invalid("bearer token 'exp' claim must be a number")
        if now > exp + self._leeway:
            raise Unauthenticated(TOKEN_EXPIRED, "bearer token expired")
        if exp > now + self._max_lifetime + self._leeway:
            raise _invalid(f"bearer token lives too long: 'exp' is more than {self._max_lifetime:.0f} s ahead")
        iat = claims.get("iat")
        if iat is not None:
            if isinstance(iat, bool) or not isinstance(iat, int | float):
                raise _invalid("bearer token 'iat' claim must be a number")
            if iat > now + self._leeway:
                raise _invalid("bearer token issued in the future ('iat')")
        nbf = claims.get("nbf")
        if nbf is not None:
            if isinstance(nbf, bool) or not isinstance(nbf, int | float):
                raise _invalid("bearer token 'nbf' claim must be a number")
            if now + self._leeway < nbf:
                raise _invalid("bearer token not valid yet")

        sub = claims.get("sub")
        if not isinstance(sub, str) or not valid_user_id(sub):
            raise _invalid(
                f"bearer token 'sub' claim must be a user id: 1-{MAX_USER_ID_LENGTH} printable characters, no '/'"
            )
        return User(id=sub, display_name=_display_name(claims, sub)), float(exp)


def _display_name(claims: Mapping[str, Any], fallback: str) -> str:
    for claim in ("name", "preferred_username"):
        value = claims.get(claim)
        if isinstance(value, str):
            # control characters (NUL included) can't be stored or shown: drop them
            value = "".join(c for c in value if c.isprintable()).strip()[:MAX_DISPLAY_NAME_LENGTH]
            if value:
                return value
    return fallback


def issue_token(
    *,
    subject: str,
    issuer: str,
    audience: str,
    key: str | bytes,
    algorithm: str = "HS256",
    expires_in: timedelta | float = timedelta(hours=1),
    name: str | None = None,
    preferred_username: str | None = None,
    now: datetime | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
) -> str:
    """Sign a token (tests, the dev token). ``key`` is the HS256 secret or a PEM private key for RS256/ES256.

    ``expires_in`` may be negative to mint an already-expired token; an ``extra_claims`` value of
    ``None`` removes that claim.
    """
    issued = now or SystemClock().now()
    ttl = expires_in if isinstance(expires_in, timedelta) else timedelta(seconds=expires_in)
    claims: dict[str, Any] = {
        "sub": subject,
        "iss": issuer,
        "aud": audience,
        "iat": int(issued.timestamp()),
        "exp": int((issued + ttl).timestamp()),
    }
    if name is not None:
        claims["name"] = name
    if preferred_username is not None:
        claims["preferred_username"] = preferred_username
    for claim, value in (extra_claims or {}).items():
        if value is None:
            claims.pop(claim, None)  # lets tests drop a standard claim, e.g. {"sub": None}
        else:
            claims[claim] = value
    return jwt.encode(claims, key, algorithm=algorithm, headers=dict(headers) if headers else None)
