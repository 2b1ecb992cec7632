"""Validated identifiers: DICOM UIDs (PS3.5 §9.1) and TenantIDs.

Every UID and TenantID passes through here before it touches a path, a query
or a message. The checks are what path safety needs (digits and dots, no
empty component, at most 64 characters); leading zeros in a component,
which PS3.5 forbids but real modalities emit, are tolerated on reading.
"""

from __future__ import annotations

import re

from dicomcloud.errors import InvalidTenant, InvalidUID

_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
# lower case only: a TenantID names a folder under ROOT, and on a case-insensitive file
# system (macOS, Windows shares) "HOSP-B" and "hosp-b" would share one
_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_UID_LENGTH = 64


def validate_uid(value: object, name: str = "UID") -> str:
    """Return ``value`` as a UID string or raise :class:`InvalidUID` saying why."""
    if not isinstance(value, str):
        raise InvalidUID(f"{name} must be a string, got {type(value).__name__}")
    uid = value.rstrip("\x00 ")
    if not uid:
        raise InvalidUID(f"{name} is empty")
    if len(uid) > MAX_UID_LENGTH:
        raise InvalidUID(f"{name} is {len(uid)} characters long; at most 64 are allowed")
    if not _UID_RE.fullmatch(uid):
        raise InvalidUID(f"{name} {uid[:70]!r} is not a UID: only digits and single dots between them")
    return uid


def is_valid_uid(value: object) -> bool:
    try:
        validate_uid(value)
    except InvalidUID:
        return False
    return True


def validate_tenant(value: object) -> str:
    """Return ``value`` as a TenantID or raise :class:`InvalidTenant`."""
    if not isinstance(value, str) or not _TENANT_RE.fullmatch(value):
        raise InvalidTenant(
            f"TenantID {str(value)[:70]!r} is not valid: 1-63 characters of lower-case letters, "
            "digits, '-' and '_', starting with a letter or digit"
        )
    return value
