"""How an error of the tree in ``errors.py`` looks on the wire (PS3.18 §8.5).

The status comes from ``errors.http_status``; the reason is the plain-text body
and a ``Warning: 299`` header. A 401 carries the RFC 6750 §3 challenge
(``WWW-Authenticate: Bearer realm=…, error=…``), a 403 for a missing scope
names that scope. Reasons are ours: they never quote a token.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse, Response

from dicomcloud.errors import DicomCloudError, Forbidden, InvalidAuthorization, Unauthenticated, http_status

REALM = "dicomcloud"


def warning_value(text: str, agent: str = "dicomcloud") -> str:
    """A ``Warning`` field value (RFC 7234 §5.5) with code 299, as PS3.18 §8.3.5.1.1 asks.
    A header is latin-1 on the wire: anything but printable ASCII becomes "?"."""
    clean = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)[:500]
    return f'299 {agent} "' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quoted(text: str) -> str:
    """An RFC 7230 quoted-string of printable ASCII, without quotes or backslashes."""
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "?" for c in text)[:200]


def challenge(exc: DicomCloudError) -> str | None:
    """The ``WWW-Authenticate`` value for ``exc``, if it calls for one."""
    if isinstance(exc, Unauthenticated):
        if not exc.error:
            return f'Bearer realm="{REALM}"'
        return f'Bearer realm="{REALM}", error="{exc.error}", error_description="{_quoted(exc.reason)}"'
    if isinstance(exc, InvalidAuthorization):
        return f'Bearer realm="{REALM}", error="invalid_request", error_description="{_quoted(exc.reason)}"'
    if isinstance(exc, Forbidden) and exc.scope:
        return f'Bearer realm="{REALM}", error="insufficient_scope", scope="{_quoted(exc.scope)}"'
    return None


def error_response(exc: DicomCloudError) -> Response:
    headers = {"Warning": warning_value(exc.reason)}
    www_authenticate = challenge(exc)
    if www_authenticate is not None:
        headers["WWW-Authenticate"] = www_authenticate
    return PlainTextResponse(exc.reason + "\n", status_code=http_status(exc), headers=headers)
