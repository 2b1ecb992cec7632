"""The OpenID provider's signing keys: discovery, JWKS fetch, cache, refresh.

Keys come from ``jwks_url`` when configured, else from the ``jwks_uri`` of
``{issuer}/.well-known/openid-configuration`` (OpenID Connect Discovery 1.0
§4; the configuration's ``issuer`` must equal ours, §4.3). The key set is
kept for ``ttl`` seconds; a token naming a ``kid`` we do not hold triggers one
refresh (key rotation), at most every ``min_refresh`` seconds so that forged
kids cannot make us hammer the provider. Concurrent refreshes share one fetch.

Fail closed: while no key set has ever been fetched, or the one we hold
lacks the kid and the provider cannot be reached, :class:`Unavailable` is
raised (HTTP 503) — never a pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import jwt

from dicomcloud.errors import Unauthenticated, Unavailable
from dicomcloud.ports import SigningKey

log = logging.getLogger(__name__)


class JwksKeys:
    def __init__(
        self,
        issuer: str,
        *,
        jwks_url: str = "",
        ttl: float = 3600.0,
        min_refresh: float = 10.0,
        timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._issuer = issuer
        self._jwks_url = jwks_url
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._client = client or httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at = 0.0  # when the held key set was fetched (0: never)
        self._attempted_at = -1e9  # when a fetch was last tried, successful or not
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        await self._client.aclose()

    async def prefetch(self) -> None:
        """Fetch the key set now (at start), so the first request does not wait for it;
        a provider that does not answer is logged, and tried again on demand."""
        await self._refresh()

    async def key(self, kid: str | None) -> SigningKey:
        """The key ``kid`` names (``None``: the only key of the set)."""
        now = time.monotonic()
        stale = not self._fetched_at or now - self._fetched_at > self._ttl
        found = None if stale else self._pick(kid)
        if found is not None:
            return found
        await self._refresh()
        if not self._fetched_at:
            raise Unavailable("the OpenID provider is unreachable: tokens cannot be verified")
        found = self._pick(kid)
        if found is None:
            raise Unauthenticated("the token's signing key is not one of the provider's keys")
        return found

    def _pick(self, kid: str | None) -> SigningKey | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        attempted = self._attempted_at
        async with self._lock:
            if self._attempted_at != attempted:
                return  # another request refreshed while we waited
            # every attempt, failed or not, waits min_refresh (1 s while we hold no keys)
            interval = self._min_refresh if self._fetched_at else min(1.0, self._min_refresh)
            if time.monotonic() - self._attempted_at < interval:
                return
            self._attempted_at = time.monotonic()
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError, jwt.PyJWKError) as exc:
                # the reason names the URL and the failure, never a token
                log.warning("OpenID provider: could not fetch the signing keys: %s", exc)
                if self._fetched_at and time.monotonic() - self._fetched_at > 2 * self._ttl:
                    self._keys, self._fetched_at = {}, 0.0  # too old to trust any more
                return
            self._keys, self._fetched_at = keys, time.monotonic()
            log.info("OpenID provider: %d signing key(s) loaded", len(keys))

    async def _fetch(self) -> dict[str, SigningKey]:
        url = self._jwks_url or await self._discover()
        document = await self._get_json(url)
        keys: dict[str, SigningKey] = {}
        for entry in document.get("keys", []):
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
                continue  # encryption keys and shared secrets never verify our tokens
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWKError:
                continue  # a key type or algorithm we do not support
            alg = entry.get("alg")
            keys[str(entry.get("kid", ""))] = SigningKey(key.key, alg if isinstance(alg, str) else None)
        if not keys:
            raise ValueError(f"{url} holds no usable signing key")
        return keys

    async def _discover(self) -> str:
        url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
        config = await self._get_json(url)
        if config.get("issuer") != self._issuer:
            raise ValueError(f"{url} names the issuer {config.get('issuer')!r}, not {self._issuer!r}")
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise ValueError(f"{url} has no jwks_uri")
        return jwks_uri

    async def _get_json(self, url: str) -> dict[str, Any]:
        response = await self._client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return document
