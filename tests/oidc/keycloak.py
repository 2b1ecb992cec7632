"""The tests' OpenID Connect provider: a real Keycloak (scripts/keycloak.sh).

``DICOMCLOUD_TEST_OIDC_ISSUER`` names the issuer of the realm ``dicomcloud``
(tests/oidc/realm-dicomcloud.json), ``http://127.0.0.1:PORT/realms/dicomcloud``;
``scripts/test.sh`` starts one. Without it the tests marked :data:`needs_oidc`
are skipped on a developer's machine and fail under ``CI=true``.

Its clients use the client-credentials grant, with the secret ``<client id>-secret``.
Their access tokens (RS256, 300 s) carry ``aud`` ``dicomcloud`` (a string; no
``aud`` at all for ``no-audience``), ``scope`` (space separated: the client's DICOMweb
scopes), ``tenants`` (a JSON array) and ``sub`` (``sa-<client id>``), ``azp`` (the client id):

- ``reader-a``: dicomweb.read; ["hosp-a"]
- ``writer-a``: dicomweb.read dicomweb.write; ["hosp-a"]
- ``reader-b``: dicomweb.read; ["hosp-b"]
- ``admin``: dicomweb.read dicomweb.write dicomweb.delete; ["hosp-a", "hosp-b"]
- ``no-audience``: dicomweb.read; ["hosp-a"]; no ``aud``
- ``no-scope-a``: no DICOMweb scope (``scope`` is ""); ["hosp-a"]
- ``short-lived``: dicomweb.read; ["hosp-a"]; expires 2 s after it is issued

The server has no fixed hostname: a token asked of ``localhost`` instead of
``127.0.0.1`` (``token(..., host="localhost")``) is signed by the same keys but
names the issuer ``http://localhost:PORT/realms/dicomcloud``: a validly signed
token of a wrong issuer.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

ISSUER = os.environ.get("DICOMCLOUD_TEST_OIDC_ISSUER", "")
IN_CI = os.environ.get("CI", "").lower() == "true"
NO_OIDC = "DICOMCLOUD_TEST_OIDC_ISSUER is not set (scripts/test.sh starts a Keycloak)"

needs_oidc = pytest.mark.skipif(not ISSUER and not IN_CI, reason=NO_OIDC)


def issuer_url() -> str:
    """The test provider's issuer (fails the test under ``CI=true`` when there is none)."""
    if not ISSUER:
        pytest.fail(f"CI=true and {NO_OIDC}: the OpenID Connect tests must run in CI")
    return ISSUER


def with_host(url: str, host: str) -> str:
    """``url`` with its host name replaced (the port stays)."""
    parts = urlsplit(url)
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def token(client_id: str, *, issuer: str = ISSUER, host: str | None = None) -> str:
    """An access token of ``client_id`` (client-credentials grant, client_secret_post).

    ``host`` asks another host name of the same server (``"localhost"``): the
    token's ``iss`` then names that host.
    """
    issuer = issuer or issuer_url()
    if host is not None:
        issuer = with_host(issuer, host)
    response = httpx.post(
        f"{issuer}/protocol/openid-connect/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": f"{client_id}-secret"},
        timeout=30,
    )
    if response.status_code != 200:
        pytest.fail(f"no token for {client_id} from {issuer}: {response.status_code} {response.text}")
    access_token: str = response.json()["access_token"]
    return access_token


def _segment(token: str, index: int) -> dict[str, Any]:
    segment = token.split(".")[index]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return decoded


def claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, not verified (for the tests' assertions only)."""
    return _segment(token, 1)


def header(token: str) -> dict[str, Any]:
    """The JOSE header of a JWT (``alg``, ``kid``), not verified."""
    return _segment(token, 0)
