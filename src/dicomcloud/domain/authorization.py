"""Who may do what: the principal a bearer token proves, and the grant check.

A request needs one *action* — read (QIDO-RS, WADO-RS/URI, rendered), write
(STOW-RS) or delete — on one *tenant* (from the path, ARCHITECTURE §6.3). The
token grants actions through its scopes (the names are deployment settings,
``auth_read_scope`` …) and tenants through a claim (``auth_tenant_claim``).
Both must hold; there is no wildcard tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from dicomcloud.errors import Forbidden


class Action(Enum):
    READ = "read"
    WRITE = "write"
    DELETE = "delete"


_METHOD_ACTIONS = {
    "GET": Action.READ,
    "HEAD": Action.READ,
    "OPTIONS": Action.READ,
    "POST": Action.WRITE,
    "PUT": Action.WRITE,
    "PATCH": Action.WRITE,
    "DELETE": Action.DELETE,
}


def check_algorithms(algorithms: tuple[str, ...]) -> None:
    """Refuse an allow-list that would let a forged token through: ``none``, or a symmetric
    (HMAC) algorithm, which would verify with the provider's *public* key as the secret."""
    if not algorithms:
        raise ValueError("auth_algorithms is empty")
    bad = [a for a in algorithms if a.lower() == "none" or a.upper().startswith("HS")]
    if bad:
        raise ValueError(f"auth_algorithms may not contain {', '.join(bad)} (only asymmetric signatures)")


def action_for(method: str) -> Action:
    """The action an HTTP method asks for; an unknown method needs the strongest grant."""
    return _METHOD_ACTIONS.get(method.upper(), Action.DELETE)


@dataclass(frozen=True, slots=True)
class Principal:
    """What a verified token says about its bearer."""

    subject: str
    scopes: frozenset[str]
    tenants: frozenset[str]
    expires_at: float  # the token's ``exp`` (seconds since the epoch)


@dataclass(frozen=True, slots=True)
class ScopeNames:
    read: str
    write: str
    delete: str

    def for_action(self, action: Action) -> str:
        return {Action.READ: self.read, Action.WRITE: self.write, Action.DELETE: self.delete}[action]


def authorize(principal: Principal, tenant_id: str, action: Action, scopes: ScopeNames) -> None:
    """Raise :class:`Forbidden` unless ``principal`` may do ``action`` in ``tenant_id``."""
    if tenant_id not in principal.tenants:
        raise Forbidden(f"the token does not grant access to tenant {tenant_id!r}")
    needed = scopes.for_action(action)
    if needed not in principal.scopes:
        raise Forbidden(f"the token lacks the scope {needed!r} needed to {action.value}", scope=needed)
