"""The one exception tree of dicomcloud, and how it maps to DIMSE and HTTP.

::

    DicomCloudError
    ├── InvalidInput                 bad input from a client; never retry as is
    │   ├── InvalidUID               not digits and dots, empty component, > 64 chars
    │   ├── InvalidTenant            TenantID not a short safe token
    │   ├── MalformedDicom           unreadable / truncated Part 10 or dataset
    │   ├── MissingAttribute         a required attribute is absent or empty
    │   ├── DatasetMismatch          body disagrees with the request (URL study UID,
    │   │                            command SOP Instance UID, SOP Class)
    │   ├── InvalidQuery             unknown or malformed QIDO / WADO parameter
    │   ├── UnsupportedMediaType     Content-Type we do not accept
    │   ├── PayloadTooLarge          body or part over the configured limit
    │   └── InvalidAuthorization     an Authorization header that is not one bearer token
    ├── Unauthenticated              no bearer token, or one that does not verify (RFC 6750)
    ├── Forbidden                    authenticated, but the scope, tenant, calling AE title
    │                                or source address is not granted
    ├── RequestTimeout               the client stopped sending its request body
    ├── NotFound                     no such tenant / study / series / instance / frame
    ├── NotAcceptable                no representation matches the Accept header
    └── Unavailable                  a store or the bus failed; the client may retry

Edges translate foreign errors into this tree (``raise ... from exc``); the
two tables below are the only places that turn it into a DIMSE status
(PS3.4 Annex B.2.3 / PS3.7 Annex C) or an HTTP status (PS3.18 §8.5).
"""

from __future__ import annotations


class DicomCloudError(Exception):
    """Base of every error dicomcloud raises on purpose."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidInput(DicomCloudError):
    pass


class InvalidUID(InvalidInput):
    pass


class InvalidTenant(InvalidInput):
    pass


class MalformedDicom(InvalidInput):
    pass


class MissingAttribute(InvalidInput):
    pass


class DatasetMismatch(InvalidInput):
    pass


class InvalidQuery(InvalidInput):
    pass


class UnsupportedMediaType(InvalidInput):
    pass


class PayloadTooLarge(InvalidInput):
    pass


class Unauthenticated(DicomCloudError):
    """401. ``error`` is the RFC 6750 §3.1 code for ``WWW-Authenticate`` ("" when no
    token was sent at all, "invalid_token" otherwise). The reason never quotes the token."""

    def __init__(self, reason: str, error: str = "invalid_token") -> None:
        super().__init__(reason)
        self.error = error


class Forbidden(DicomCloudError):
    """403 (HTTP) / Refused: Not Authorized (DIMSE). ``scope`` names the scope that was
    missing, for ``WWW-Authenticate: Bearer error="insufficient_scope"``."""

    def __init__(self, reason: str, scope: str = "") -> None:
        super().__init__(reason)
        self.scope = scope


class RequestTimeout(DicomCloudError):
    pass


class InvalidAuthorization(InvalidInput):
    pass


class NotFound(DicomCloudError):
    pass


class NotAcceptable(DicomCloudError):
    pass


class Unavailable(DicomCloudError):
    pass


# C-STORE failure statuses (PS3.4 Table B.2-1); also the STOW-RS FailureReason
# (0008,1197) values of PS3.18 Table 10.5.3-1 use the same codes.
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NOT_AUTHORIZED = 0x0124  # Refused: Not Authorized (PS3.7 Annex C)

DIMSE_STATUS: dict[type[DicomCloudError], int] = {
    InvalidUID: STATUS_CANNOT_UNDERSTAND,
    InvalidTenant: STATUS_CANNOT_UNDERSTAND,
    MalformedDicom: STATUS_CANNOT_UNDERSTAND,
    MissingAttribute: STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    DatasetMismatch: STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    PayloadTooLarge: STATUS_OUT_OF_RESOURCES,
    InvalidInput: STATUS_CANNOT_UNDERSTAND,
    Unavailable: STATUS_OUT_OF_RESOURCES,
    Unauthenticated: STATUS_NOT_AUTHORIZED,
    Forbidden: STATUS_NOT_AUTHORIZED,
    DicomCloudError: STATUS_PROCESSING_FAILURE,
}

HTTP_STATUS: dict[type[DicomCloudError], int] = {
    UnsupportedMediaType: 415,
    PayloadTooLarge: 413,
    InvalidInput: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    RequestTimeout: 408,
    NotFound: 404,
    NotAcceptable: 406,
    Unavailable: 503,
    DicomCloudError: 500,
}


def _lookup(table: dict[type[DicomCloudError], int], exc: DicomCloudError) -> int:
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return table[DicomCloudError]


def dimse_status(exc: DicomCloudError) -> int:
    """The C-STORE status (and STOW-RS FailureReason) for ``exc``."""
    return _lookup(DIMSE_STATUS, exc)


def http_status(exc: DicomCloudError) -> int:
    """The HTTP status for ``exc``."""
    return _lookup(HTTP_STATUS, exc)
