"""OAuth2 end to end: Keycloak issues the tokens, dicomweb-client and httpx present them.

The archive runs as a subprocess with ``DICOMCLOUD_AUTH_ISSUER`` naming the
Keycloak realm of tests/oidc/realm-dicomcloud.json (scripts/keycloak.sh), so the
keys come from the provider's discovery document and JWKS. Each client of that
realm is one row of the matrix: scopes, tenants, audience, lifetime. Forgeries
start from a real Keycloak token and change one thing (alg none, HS256 keyed
with the provider's public key, unknown kid, tampered payload); a token valid
but for its issuer comes from the same realm asked under another host name.
``nbf`` is not set by Keycloak: that check is in tests/unit/test_auth.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests import factory
from tests.e2e.conftest import (
    DICOM_JSON,
    SEARCH_TIMEOUT,
    Archive,
    running_archive,
    stow_body,
    wait_for_rows,
    warehouse_url,
)
from tests.oidc.keycloak import ISSUER, claims, needs_oidc, token

pytestmark = [pytest.mark.e2e, needs_oidc]
A = "hosp-a"
B = "hosp-b"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    env = {
        "DICOMCLOUD_AUTH_ISSUER": ISSUER,
        "DICOMCLOUD_AUTH_LEEWAY_SECONDS": "1",
        "DICOMCLOUD_CORS_ORIGINS": "https://viewer.example.org",
    }
    with running_archive(tmp_path_factory.mktemp("secured"), env) as archive:
        yield archive


@pytest.fixture(scope="module")
def stored(secured: Archive) -> dict[str, Any]:
    """One study in hosp-a, stored over STOW-RS by dicomweb-client with writer-a's token."""
    from dicomweb_client.api import DICOMwebClient

    ds = factory.make_instance(PatientID=f"AUTH-{uuid.uuid4().hex[:8]}", rows=16, columns=16)
    client = DICOMwebClient(url=secured.tenant_url(A), headers=bearer(token("writer-a")))
    client.store_instances([ds])
    reader = bearer(token("reader-a"))
    deadline = time.monotonic() + SEARCH_TIMEOUT
    with secured.http() as http:
        while time.monotonic() < deadline:
            r = http.get(
                f"{secured.tenant_url(A)}/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}, headers=reader
            )
            if r.status_code == 200 and r.json():
                break
            time.sleep(0.2)
        else:
            pytest.fail("the stored instance never became searchable")
    return {"ds": ds, "study_url": f"{secured.tenant_url(A)}/studies/{ds.StudyInstanceUID}"}


def test_the_granted_client_reads_with_dicomweb_client(secured: Archive, stored: dict[str, Any]) -> None:
    from dicomweb_client.api import DICOMwebClient

    ds = stored["ds"]
    client = DICOMwebClient(url=secured.tenant_url(A), headers=bearer(token("reader-a")))
    found = client.search_for_studies(search_filters={"PatientID": ds.PatientID})
    assert [s["0020000D"]["Value"][0] for s in found] == [ds.StudyInstanceUID]
    instance = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert instance.SOPInstanceUID == ds.SOPInstanceUID
    assert instance.PatientID == ds.PatientID


def refused(response: httpx.Response, status: int, sent: str | None = None) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    if sent is not None:
        assert sent not in response.text and sent not in str(response.headers)
    return response.text


def test_the_negative_matrix_from_real_tokens(secured: Archive, stored: dict[str, Any]) -> None:
    url = stored["study_url"] + "/series"
    real = token("reader-a")
    header_b64, payload_b64, signature_b64 = real.split(".")
    header = json.loads(unb64(header_b64))
    payload = json.loads(unb64(payload_b64))

    # the provider's public key, as PEM, for the HS256 forgery
    jwks_uri = httpx.get(f"{ISSUER}/.well-known/openid-configuration").json()["jwks_uri"]
    jwk = next(k for k in httpx.get(jwks_uri).json()["keys"] if k["kid"] == header["kid"])
    pem = jwt.PyJWK(jwk).key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def encode(h: dict[str, Any], p: dict[str, Any]) -> str:
        return f"{b64(json.dumps(h).encode())}.{b64(json.dumps(p).encode())}"

    hs_input = encode({**header, "alg": "HS256"}, payload)
    hs_forgery = f"{hs_input}.{b64(hmac.new(pem, hs_input.encode(), hashlib.sha256).digest())}"
    tampered = f"{header_b64}.{b64(json.dumps({**payload, 'tenants': [A, B]}).encode())}.{signature_b64}"

    cases: list[tuple[str, dict[str, str], int, str]] = [
        ("no token", {}, 401, "needs a bearer token"),
        ("Basic credentials", {"Authorization": "Basic dXNlcjpwYXNz"}, 401, "Bearer"),
        ("two tokens", {"Authorization": f"Bearer {real} {real}"}, 400, "one bearer token"),
        ("alg none", bearer(f"{encode({**header, 'alg': 'none'}, payload)}."), 401, "algorithm 'none'"),
        ("HS256 keyed with the public key", bearer(hs_forgery), 401, "algorithm 'HS256'"),
        ("unknown kid", bearer(f"{encode({**header, 'kid': 'not-a-key'}, payload)}.{signature_b64}"), 401, "keys"),
        ("tampered payload", bearer(tampered), 401, "signature does not verify"),
        ("wrong issuer (same realm, other host name)", bearer(token("reader-a", host="localhost")), 401, "issuer"),
        ("no audience (the client without the audience mapper)", bearer(token("no-audience")), 401, "aud"),
        ("no dicomweb scope", bearer(token("no-scope-a")), 403, "dicomweb.read"),
        ("other tenant's token", bearer(token("reader-b")), 403, "hosp-a"),
        ("garbage", bearer("x" * 40), 401, "not a signed JWT"),
    ]
    failures = []
    with secured.http() as http:
        assert http.get(url, headers=bearer(real)).status_code == 200  # the control: the real token works
        for name, headers, status, reason in cases:
            r = http.get(url, headers=headers)
            problem = None
            if r.status_code != status or reason not in r.text:
                problem = f"{r.status_code} {r.text.strip()[:120]!r}"
            elif status == 401 and not r.headers.get("www-authenticate", "").startswith('Bearer realm="dicomcloud"'):
                problem = f"no challenge: {r.headers.get('www-authenticate')!r}"
            elif real in r.text or real in str(r.headers):
                problem = "the token is echoed"
            if problem:
                failures.append(f"{name}: expected {status} ({reason}), got {problem}")
    assert not failures, "\n".join(failures)
    log = secured.output()
    assert real not in log and signature_b64 not in log, "a token reached the server's log"


def test_scopes_map_to_read_and_write(secured: Archive, stored: dict[str, Any]) -> None:
    ds = factory.make_instance(PatientID="AUTH-SCOPE", rows=16, columns=16)
    body, stow_type = stow_body(factory.part10_bytes(ds))
    content_type = {"Content-Type": stow_type}
    with secured.http() as http:
        r = http.post(
            f"{secured.tenant_url(A)}/studies", content=body, headers={**content_type, **bearer(token("reader-a"))}
        )
        refused(r, 403)
        assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
        assert 'scope="dicomweb.write"' in r.headers["www-authenticate"]
        # writing into a tenant the token does not name
        r = http.post(
            f"{secured.tenant_url(B)}/studies", content=body, headers={**content_type, **bearer(token("writer-a"))}
        )
        refused(r, 403)
        # nothing of the refused writes became visible
        r = http.get(
            f"{secured.tenant_url(A)}/studies", params={"PatientID": "AUTH-SCOPE"}, headers=bearer(token("admin"))
        )
        assert r.status_code in (200, 204) and (r.status_code == 204 or r.json() == [])
        # the default tenant (/dicom-web) is a tenant like any other: not granted to writer-a
        refused(http.get(f"{secured.url}/studies", headers=bearer(token("writer-a"))), 403)
        # every route is behind the token, WADO-URI and unknown paths included; /healthz is not
        refused(http.get(f"{secured.base_url}/tenants/{A}/wado", params={"requestType": "WADO"}), 401)
        refused(http.get(f"{secured.base_url}/no/such/route"), 401)
        assert http.get(f"{secured.base_url}/healthz").status_code == 200


def test_an_expired_token_is_refused(secured: Archive, stored: dict[str, Any]) -> None:
    short = token("short-lived")
    left = claims(short)["exp"] - time.time()
    with secured.http() as http:
        assert http.get(stored["study_url"] + "/series", headers=bearer(short)).status_code == 200
        time.sleep(max(0.0, left) + 1 + 1.5)  # past exp and the leeway of 1 s
        text = refused(http.get(stored["study_url"] + "/series", headers=bearer(short)), 401, short)
    assert "expired" in text


def test_cors_preflight_needs_no_token_and_refusals_carry_cors_headers(secured: Archive) -> None:
    origin = "https://viewer.example.org"
    with secured.http() as http:
        r = http.options(
            f"{secured.tenant_url(A)}/studies",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == origin
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = http.get(f"{secured.tenant_url(A)}/studies", headers={"Origin": origin})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin
        assert "www-authenticate" in r.headers["access-control-expose-headers"].lower()
        evil = http.options(
            f"{secured.tenant_url(A)}/studies",
            headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"},
        )
        assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers


def test_the_access_log_records_the_subject(secured: Archive, stored: dict[str, Any]) -> None:
    database_url = warehouse_url(secured)
    reader = token("reader-a")
    subject = claims(reader)["sub"]
    study = stored["ds"].StudyInstanceUID
    with secured.http() as http:
        assert (
            http.get(stored["study_url"] + "/series", headers={**bearer(reader), "Accept": DICOM_JSON}).status_code
            == 200
        )
        refused(http.get(stored["study_url"] + "/series", headers=bearer(token("reader-b"))), 403)

    found = wait_for_rows(
        database_url,
        "SELECT subject, status, tenant_id FROM warehouse.wado_access_log "
        "WHERE study_instance_uid = $1 AND route = '/studies/{study}/series'",
        study,
        until=lambda rows: {r["status"] for r in rows} >= {200, 403},
    )
    granted = {(r["subject"], r["tenant_id"]) for r in found if r["status"] == 200}
    refused_ = {(r["subject"], r["tenant_id"]) for r in found if r["status"] == 403}
    assert (subject, A) in granted, found
    assert (claims(token("reader-b"))["sub"], A) in refused_, found
    # a verified token names its subject (200, 403); a refused one (401, 400) names none
    assert all(bool(r["subject"]) == (r["status"] in (200, 403)) for r in found), found


def test_fail_closed_when_the_provider_cannot_be_reached(tmp_path_factory: pytest.TempPathFactory) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    env = {"DICOMCLOUD_AUTH_ISSUER": f"http://127.0.0.1:{closed}/realms/dicomcloud"}
    with running_archive(tmp_path_factory.mktemp("unreachable"), env) as archive, archive.http() as http:
        real = token("reader-a")
        r = http.get(f"{archive.tenant_url(A)}/studies", headers=bearer(real))
        assert r.status_code == 503 and "unreachable" in r.text
        assert real not in r.text
        assert http.get(f"{archive.tenant_url(A)}/studies").status_code == 401
