"""The tests' OpenID Connect provider issues the tokens the other tests assume.

A real Keycloak (scripts/keycloak.sh, ``DICOMCLOUD_TEST_OIDC_ISSUER``) with the
realm of tests/oidc/realm-dicomcloud.json: signed RS256 with a key of its JWKS,
``aud`` / ``scope`` / ``tenants`` / ``sub`` as tests/oidc/keycloak.py describes,
a short-lived client, and an issuer that follows the host asked.
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from tests.oidc.keycloak import claims, header, issuer_url, needs_oidc, token

pytestmark = needs_oidc


def audiences(payload: dict[str, Any]) -> list[str]:
    aud = payload.get("aud", [])
    return [aud] if isinstance(aud, str) else list(aud)


def scopes(payload: dict[str, Any]) -> set[str]:
    return set(str(payload.get("scope", "")).split())


@pytest.fixture(scope="module")
def discovery() -> dict[str, Any]:
    response = httpx.get(f"{issuer_url()}/.well-known/openid-configuration", timeout=30)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def test_reader_token_claims_and_signature(discovery: dict[str, Any]) -> None:
    access_token = token("reader-a")
    payload = claims(access_token)
    assert payload["iss"] == issuer_url() == discovery["issuer"]
    assert "dicomcloud" in audiences(payload)
    assert "dicomweb.read" in scopes(payload)
    assert not scopes(payload) & {"dicomweb.write", "dicomweb.delete"}
    assert payload["tenants"] == ["hosp-a"]
    assert isinstance(payload.get("sub"), str) and payload["sub"]
    assert payload["exp"] - payload["iat"] == 300

    jose = header(access_token)
    assert jose["alg"] == "RS256"
    keys = httpx.get(discovery["jwks_uri"], timeout=30).json()["keys"]
    [key] = [key for key in keys if key.get("kid") == jose["kid"]]
    verified = jwt.decode(
        access_token, jwt.PyJWK(key).key, algorithms=["RS256"], audience="dicomcloud", issuer=issuer_url()
    )
    assert verified == payload


def test_scopes_and_tenants_of_the_other_clients() -> None:
    assert scopes(claims(token("writer-a"))) == {"dicomweb.read", "dicomweb.write"}
    admin = claims(token("admin"))
    assert scopes(admin) == {"dicomweb.read", "dicomweb.write", "dicomweb.delete"}
    assert admin["tenants"] == ["hosp-a", "hosp-b"]
    assert claims(token("reader-b"))["tenants"] == ["hosp-b"]
    no_scope = claims(token("no-scope-a"))
    assert not {s for s in scopes(no_scope) if s.startswith("dicomweb.")}
    assert "dicomcloud" in audiences(no_scope)


def test_no_audience_client_lacks_the_audience() -> None:
    payload = claims(token("no-audience"))
    assert "dicomcloud" not in audiences(payload)
    assert "dicomweb.read" in scopes(payload)


def test_short_lived_client() -> None:
    payload = claims(token("short-lived"))
    assert payload["exp"] - payload["iat"] <= 5


def test_issuer_follows_the_host_asked() -> None:
    local = claims(token("reader-a", host="localhost"))
    assert local["iss"] != claims(token("reader-a"))["iss"]
    assert local["iss"].startswith("http://localhost:")
