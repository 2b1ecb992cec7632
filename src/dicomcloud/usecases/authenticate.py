"""Bearer token → :class:`Principal` (RFC 6750, JWT access tokens per RFC 7519 / RFC 9068).

Checked, in order: the token is a JWS compact serialisation; its ``alg`` is on
the allow-list (``none`` and the HMAC algorithms can never be on it: a
symmetric algorithm with the provider's *public* key is the classic forgery);
the key named by ``kid`` is one of the provider's signing keys
(:class:`JwksKeys`), of a type that fits ``alg``; the signature; ``iss``,
``aud``, ``exp`` (required) and ``nbf``/``iat`` with a small leeway. Scopes come
from ``scope`` (RFC 8693 §4.2, space separated) or ``scp`` (a list), tenants
from the configured claim (a list, or one space-separated string).

A verified token is remembered for up to a minute (never past its ``exp``),
keyed by the token itself, so a viewer's burst of frame requests costs one
signature check. Reasons name what failed, never the token.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import jwt

from dicomcloud.domain.authorization import Principal, check_algorithms
from dicomcloud.errors import Unauthenticated
from dicomcloud.ports import SigningKeys

_REMEMBER_SECONDS = 60.0
_REMEMBERED = 4096
_MAX_TOKEN_CHARS = 16 * 1024



class TokenVerifier:
    def __init__(
        self,
        keys: SigningKeys,
        *,
        issuer: str,
        audience: str,
        algorithms: tuple[str, ...],
        leeway: float,
        tenant_claim: str,
    ) -> None:
        check_algorithms(algorithms)
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._algorithms = algorithms
        self._leeway = leeway
        self._tenant_claim = tenant_claim
        self._remembered: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    async def prefetch(self) -> None:
        await self._keys.prefetch()

    async def close(self) -> None:
        await self._keys.close()

    async def verify(self, token: str) -> Principal:
        now = time.time()
        hit = self._remembered.get(token)
        if hit is not None:
            principal, until = hit
            if now < until:
                return principal
            del self._remembered[token]
        principal = await self._verify(token)
        self._remembered[token] = (principal, min(now + _REMEMBER_SECONDS, principal.expires_at + self._leeway))
        if len(self._remembered) > _REMEMBERED:
            self._remembered.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> Principal:
        if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
            raise Unauthenticated("the bearer token is not a signed JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("the bearer token's header cannot be read") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise Unauthenticated(f"the token's algorithm {str(alg)[:20]!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("the token's kid is not a string")
        key = await self._keys.key(kid)
        if key.alg is not None and key.alg != alg:
            raise Unauthenticated("the token's algorithm does not fit its signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated("the token is not valid yet") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("the token was issued by another issuer") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated(f"the token is not meant for audience {self._audience!r}") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthenticated("the token's signature does not verify") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no {exc.claim!r} claim") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise Unauthenticated(f"the token is invalid: {type(exc).__name__}") from exc
        return Principal(
            subject=_text(claims.get("sub")) or _text(claims.get("client_id")),
            scopes=_words(claims.get("scope")) | _words(claims.get("scp")),
            tenants=_words(claims.get(self._tenant_claim)),
            expires_at=float(claims["exp"]),
        )


def _text(value: Any) -> str:
    return value[:256] if isinstance(value, str) else ""


def _words(value: Any) -> frozenset[str]:
    """A space-separated string or a list of strings, as a set (anything else: empty)."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()
