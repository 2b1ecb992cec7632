"""The bearer-token checks, one claim at a time, with keys of the test's own.

The real provider (Keycloak) drives tests/e2e/test_auth.py; here each check
is isolated: every token below is valid but for the one thing named, so a
refusal can only come from that check. Also: the JWKS cache (discovery,
refresh on an unknown kid, its rate limit, failing closed) over httpx's mock
transport, the WWW-Authenticate challenges, and the middleware's order of
checks on a tiny ASGI app.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from dicomcloud.adapters.oidc import JwksKeys
from dicomcloud.domain.authorization import Action, Principal, ScopeNames, action_for, authorize, check_algorithms
from dicomcloud.entrypoints.http.auth import SUBJECT, BearerAuthMiddleware, bearer_token, path_tenant
from dicomcloud.entrypoints.http.errors import challenge
from dicomcloud.errors import (
    Forbidden,
    InvalidAuthorization,
    InvalidTenant,
    Unauthenticated,
    Unavailable,
    http_status,
)
from dicomcloud.ports import SigningKey
from dicomcloud.settings import load
from dicomcloud.usecases.authenticate import TokenVerifier

ISSUER = "https://idp.test/realms/r"
AUDIENCE = "dicomcloud"
SCOPES = ScopeNames("dicomweb.read", "dicomweb.write", "dicomweb.delete")
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


class StaticKeys:
    """The SigningKeys port with fixed keys: kid -> public key."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self.keys = keys

    async def key(self, kid: str | None) -> SigningKey:
        if kid not in self.keys:
            raise Unauthenticated("the token's signing key is not one of the provider's keys")
        return SigningKey(self.keys[kid], None)

    async def prefetch(self) -> None:
        return None

    async def close(self) -> None:
        return None


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": [AUDIENCE, "account"],
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
        "scope": "openid dicomweb.read",
        "tenants": ["hosp-a"],
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], *, key: Any = RSA_KEY, alg: str = "RS256", kid: str | None = "k1") -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def verifier(keys: Any = None, leeway: float = 2) -> TokenVerifier:
    return TokenVerifier(
        keys or StaticKeys({"k1": RSA_KEY.public_key(), "ec": EC_KEY.public_key()}),
        issuer=ISSUER,
        audience=AUDIENCE,
        algorithms=("RS256", "ES256"),
        leeway=leeway,
        tenant_claim="tenants",
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)])


async def test_a_valid_token_gives_its_principal() -> None:
    principal = await verifier().verify(sign(claims()))
    assert principal.subject == "user-1"
    assert principal.scopes == {"openid", "dicomweb.read"}
    assert principal.tenants == {"hosp-a"}
    ec_principal = await verifier().verify(sign(claims(scp=["dicomweb.write"]), key=EC_KEY, alg="ES256", kid="ec"))
    assert "dicomweb.write" in ec_principal.scopes


def public_pem() -> bytes:
    return RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("expired", lambda: sign(claims(exp=int(time.time()) - 60)), "expired"),
        ("not yet valid", lambda: sign(claims(nbf=int(time.time()) + 60)), "not valid yet"),
        ("wrong issuer", lambda: sign(claims(iss="https://evil.test/realms/r")), "another issuer"),
        ("wrong audience", lambda: sign(claims(aud="somebody-else")), "audience"),
        ("no audience", lambda: sign(claims(aud=None)), "'aud'"),
        ("no exp", lambda: sign(claims(exp=None)), "'exp'"),
        ("alg none", lambda: forge({"alg": "none", "kid": "k1"}, claims()), "algorithm 'none'"),
        (
            "HS256 signed with the public key",
            lambda: forge(
                {"alg": "HS256", "kid": "k1"},
                claims(),
                b"x" * 32,
            ),
            "algorithm 'HS256'",
        ),
        ("unknown kid", lambda: sign(claims(), kid="nope"), "not one of the provider's keys"),
        ("signed by another key", lambda: sign(claims(), key=OTHER_RSA_KEY), "signature does not verify"),
        ("not a JWT", lambda: "abc.def", "not a signed JWT"),
        ("garbage header", lambda: "!!!.e30.sig", "header cannot be read"),
        ("RS256 header on an EC key", lambda: sign(claims(), key=RSA_KEY, kid="ec"), "invalid"),
    ],
)
async def test_each_bad_token_is_refused_for_its_reason(name: str, make: Any, reason: str) -> None:
    token = make()
    with pytest.raises(Unauthenticated) as caught:
        await verifier().verify(token)
    assert reason in caught.value.reason, (name, caught.value.reason)
    assert http_status(caught.value) == 401
    assert token not in caught.value.reason


async def test_a_real_hs256_forgery_with_the_public_key_is_refused() -> None:
    """The classic attack: HMAC over the token with the PEM of the provider's public key."""
    import hashlib
    import hmac

    header = b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    mac = hmac.new(public_pem(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(Unauthenticated, match="algorithm 'HS256'"):
        await verifier().verify(f"{header}.{payload}.{b64(mac)}")


async def test_a_tampered_payload_does_not_verify() -> None:
    token = sign(claims())
    header, _, signature = token.split(".")
    tampered = b64(json.dumps(claims(tenants=["hosp-b"])).encode())
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        await verifier().verify(f"{header}.{tampered}.{signature}")


async def test_leeway_accepts_small_clock_skew_only() -> None:
    now = int(time.time())
    await verifier(leeway=30).verify(sign(claims(exp=now - 10)))
    await verifier(leeway=30).verify(sign(claims(nbf=now + 10)))
    with pytest.raises(Unauthenticated, match="expired"):
        await verifier(leeway=30).verify(sign(claims(exp=now - 40)))


async def test_a_remembered_token_still_expires() -> None:
    v = verifier(leeway=0)
    token = sign(claims(exp=int(time.time()) + 1))
    await v.verify(token)
    await v.verify(token)  # remembered
    time.sleep(1.2)
    with pytest.raises(Unauthenticated, match="expired"):
        await v.verify(token)


def test_symmetric_and_none_algorithms_cannot_be_configured() -> None:
    for bad in (("RS256", "HS256"), ("none",), ("NONE",), ()):
        with pytest.raises(ValueError):
            check_algorithms(bad)
    with pytest.raises(ValueError, match="asymmetric"):
        load(env={"DICOMCLOUD_AUTH_ISSUER": ISSUER, "DICOMCLOUD_AUTH_ALGORITHMS": "RS256,HS512"})


def test_no_anonymous_dicomweb_on_a_reachable_address_unless_asked() -> None:
    with pytest.raises(ValueError, match="without authentication"):
        load(env={"DICOMCLOUD_HTTP_HOST": "0.0.0.0"})
    assert load(env={"DICOMCLOUD_HTTP_HOST": "0.0.0.0", "DICOMCLOUD_ALLOW_ANONYMOUS": "true"}).allow_anonymous
    assert load(env={"DICOMCLOUD_HTTP_HOST": "0.0.0.0", "DICOMCLOUD_AUTH_ISSUER": ISSUER}).auth_issuer == ISSUER
    assert load(env={}).http_host == "127.0.0.1"


# --- authorization ------------------------------------------------------------------------


def principal(scopes: set[str], tenants: set[str]) -> Principal:
    return Principal("u", frozenset(scopes), frozenset(tenants), time.time() + 60)


def test_tenant_and_scope_must_both_be_granted() -> None:
    reader = principal({"dicomweb.read"}, {"hosp-a"})
    authorize(reader, "hosp-a", Action.READ, SCOPES)
    with pytest.raises(Forbidden, match="tenant 'hosp-b'"):
        authorize(reader, "hosp-b", Action.READ, SCOPES)
    with pytest.raises(Forbidden) as caught:
        authorize(reader, "hosp-a", Action.WRITE, SCOPES)
    assert caught.value.scope == "dicomweb.write"
    assert http_status(caught.value) == 403
    assert action_for("GET") is Action.READ and action_for("POST") is Action.WRITE
    assert action_for("DELETE") is Action.DELETE and action_for("BREW") is Action.DELETE


def test_challenges_follow_rfc_6750() -> None:
    assert challenge(Unauthenticated("no token", error="")) == 'Bearer realm="dicomcloud"'
    value = challenge(Unauthenticated('bad "token"'))
    assert value == 'Bearer realm="dicomcloud", error="invalid_token", error_description="bad ?token?"'
    assert challenge(Forbidden("x", scope="dicomweb.write")) == (
        'Bearer realm="dicomcloud", error="insufficient_scope", scope="dicomweb.write"'
    )
    assert challenge(Forbidden("other tenant")) is None
    assert 'error="invalid_request"' in str(challenge(InvalidAuthorization("two headers")))


def test_bearer_token_parsing() -> None:
    assert bearer_token([(b"authorization", b"Bearer abc.def.ghi")]) == "abc.def.ghi"
    assert bearer_token([(b"Authorization", b"bearer  abc.def.ghi ")]) == "abc.def.ghi"
    with pytest.raises(Unauthenticated) as caught:
        bearer_token([])
    assert caught.value.error == ""
    with pytest.raises(Unauthenticated):
        bearer_token([(b"authorization", b"Basic dXNlcjpwYXNz")])
    for bad in ([(b"authorization", b"Bearer")], [(b"authorization", b"Bearer a b")]):
        with pytest.raises(InvalidAuthorization):
            bearer_token(bad)
    with pytest.raises(InvalidAuthorization):
        bearer_token([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")])


def test_path_tenant() -> None:
    assert path_tenant("/dicom-web/studies", "default") == "default"
    assert path_tenant("/wado", "default") == "default"
    assert path_tenant("/tenants/hosp-a/dicom-web/studies", "default") == "hosp-a"
    assert path_tenant("/tenants/hosp-a", "default") == "hosp-a"
    with pytest.raises(InvalidTenant):
        path_tenant("/tenants/../dicom-web", "default")


async def test_middleware_order_of_checks() -> None:
    seen: list[str] = []

    async def endpoint(request: Request) -> PlainTextResponse:
        seen.append(request.scope.get(SUBJECT, ""))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])
    wrapped = BearerAuthMiddleware(app, verifier=verifier(), scopes=SCOPES, default_tenant="default")
    token = sign(claims(tenants=["hosp-a", "default"]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://t") as http:
        assert (await http.get("/healthz")).status_code == 200  # open
        missing = await http.get("/dicom-web/studies")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="dicomcloud"'
        bad = await http.get("/dicom-web/studies", headers={"Authorization": "Bearer a.b.c"})
        assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
        auth = {"Authorization": f"Bearer {token}"}
        assert (await http.get("/tenants/hosp-a/dicom-web/studies", headers=auth)).status_code == 200
        assert (await http.get("/dicom-web/studies", headers=auth)).status_code == 200
        other = await http.get("/tenants/hosp-b/dicom-web/studies", headers=auth)
        assert other.status_code == 403 and "hosp-b" in other.text
        write = await http.post("/tenants/hosp-a/dicom-web/studies", headers=auth)
        assert write.status_code == 403 and 'scope="dicomweb.write"' in write.headers["www-authenticate"]
        # no token: 401 before anything about the path is said (not 400/403/404)
        assert (await http.get("/tenants/../x")).status_code == 401
        assert (await http.get("/tenants/a%20b/dicom-web/studies", headers=auth)).status_code == 400
    assert seen == ["", "user-1", "user-1"]  # /healthz (open), then the two granted requests


# --- the JWKS cache -----------------------------------------------------------------------


def jwk(key: Any, kid: str) -> dict[str, Any]:
    data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "use": "sig", "alg": "RS256"}


class Provider:
    """An OpenID provider's two documents behind httpx.MockTransport; counts fetches."""

    def __init__(self) -> None:
        self.keys = [jwk(RSA_KEY, "k1")]
        self.up = True
        self.jwks_fetches = 0
        self.issuer = ISSUER

    def handler(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json={"issuer": self.issuer, "jwks_uri": "https://idp.test/certs"})
        if request.url.path == "/certs":
            self.jwks_fetches += 1
            return httpx.Response(200, json={"keys": self.keys})
        return httpx.Response(404)

    def keys_cache(self, min_refresh: float = 10.0) -> JwksKeys:
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
        return JwksKeys(ISSUER, min_refresh=min_refresh, client=client)


async def test_keys_are_discovered_and_refreshed_on_an_unknown_kid_at_most_so_often() -> None:
    provider = Provider()
    keys = provider.keys_cache(min_refresh=0.3)
    v = verifier(keys)
    await v.verify(sign(claims()))
    assert provider.jwks_fetches == 1
    # key rotation: a token signed with a new key is accepted after one refresh
    provider.keys.append(jwk(OTHER_RSA_KEY, "k2"))
    time.sleep(0.35)
    await v.verify(sign(claims(sub="rotated"), key=OTHER_RSA_KEY, kid="k2"))
    assert provider.jwks_fetches == 2
    # forged kids: at most one refresh per interval, however many arrive
    for i in range(20):
        with pytest.raises(Unauthenticated, match="not one of the provider's keys"):
            await v.verify(sign(claims(), kid=f"forged-{i}"))
    assert provider.jwks_fetches == 2
    await keys.close()


async def test_fail_closed_when_the_provider_is_unreachable() -> None:
    provider = Provider()
    provider.up = False
    keys = provider.keys_cache()
    with pytest.raises(Unavailable, match="unreachable") as caught:
        await verifier(keys).verify(sign(claims()))
    assert http_status(caught.value) == 503
    await keys.close()


async def test_keys_held_keep_working_while_the_provider_is_down() -> None:
    provider = Provider()
    keys = provider.keys_cache(min_refresh=0.0)
    v = verifier(keys)
    await v.verify(sign(claims()))
    provider.up = False
    await verifier(keys).verify(sign(claims(sub="again")))  # a fresh verifier: no remembered token
    with pytest.raises(Unauthenticated):
        await v.verify(sign(claims(), kid="unknown"))
    await keys.close()


async def test_a_configuration_naming_another_issuer_is_not_trusted() -> None:
    provider = Provider()
    provider.issuer = "https://evil.test/realms/r"
    keys = provider.keys_cache()
    with pytest.raises(Unavailable):
        await verifier(keys).verify(sign(claims()))
    await keys.close()


async def test_shared_secrets_in_the_jwks_are_ignored() -> None:
    provider = Provider()
    provider.keys = [{"kty": "oct", "k": b64(public_pem()), "kid": "k1", "alg": "HS256"}]
    keys = provider.keys_cache()
    with pytest.raises(Unavailable):  # no usable signing key at all
        await verifier(keys).verify(sign(claims()))
    await keys.close()


# --- hostile tokens: never a crash, never a pass ------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_headers = st.fixed_dictionaries(
    {},
    optional={"alg": _json_values | st.sampled_from(["RS256", "none", "HS256", "ES256"]), "kid": _json_values},
)
_segments = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.", max_size=60)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=_headers | _json_values,
    payload=st.dictionaries(st.sampled_from(["iss", "aud", "exp", "nbf", "sub", "scope", "tenants"]), _json_values)
    | _json_values,
    signature=st.binary(max_size=300),
    raw=_segments,
    use_raw=st.booleans(),
)
async def test_hostile_tokens_are_refused_never_crash(
    header: Any, payload: Any, signature: bytes, raw: str, use_raw: bool
) -> None:
    """Random headers (alg and kid of every JSON type), payloads and signatures, and random
    dotted strings: each is refused with Unauthenticated, nothing else escapes."""
    try:
        token = raw if use_raw else forge(header, payload, signature)
    except (TypeError, ValueError):  # json cannot encode it (NaN is fine, bytes keys are not)
        return
    with pytest.raises(Unauthenticated):
        await verifier().verify(token)


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=200))
def test_hostile_authorization_headers_get_400_or_401(value: bytes) -> None:
    try:
        token = bearer_token([(b"authorization", value)])
    except (Unauthenticated, InvalidAuthorization) as exc:
        assert http_status(exc) in (400, 401)
        return
    assert token and " " not in token
