"""DIMSE admission: which tenant an association belongs to, and whether it may store.

The tenant of a DIMSE association comes from its called AE title (ARCHITECTURE §6.3),
never from anything else the peer says. Each tenant may restrict which calling AE
titles, and from which source networks, may associate with its called AE titles.
The decision is taken once, on the A-ASSOCIATE-RQ (PS3.8 §7.1.1); a refused request
is answered with an A-ASSOCIATE-RJ by ``entrypoints/storescp.py``.

Per-tenant rules live in a TOML file (``DICOMCLOUD_DIMSE_TENANTS_FILE``), read once
when the settings load::

    [tenants.hosp-a]                                   # the TenantID
    called_ae_titles = ["HOSPA"]                       # required, at least one
    calling_ae_titles = ["CT1", "MR2"]                 # optional; absent or empty: any
    source_networks = ["10.1.0.0/16", "127.0.0.1/32"]  # optional; absent or empty: any

    [tenants.hosp-b]
    called_ae_titles = ["HOSPB"]
    source_networks = ["10.99.0.0/16", "fd00::/8"]

A calling AE title must be listed *and* the peer's address fall in one of the
networks, when both are given. A called AE title belongs to at most one tenant.
A called AE title listed in no file tenant goes by the older settings: the
``ae_tenants`` map (called AE → tenant) or else the default tenant, with the
global ``allowed_calling_aes`` list (empty: any) and no address rule.

AE titles follow PS3.5 Table 6.2-1 (AE): 1 to 16 characters of the default
repertoire without backslash; leading and trailing spaces are not significant.
Unknown keys are refused, so that a misspelt restriction never silently allows
everyone.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dicomcloud.domain.uids import validate_tenant
from dicomcloud.errors import Forbidden, InvalidTenant

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
AE_TITLE_MAX = 16
_TENANT_KEYS = ("called_ae_titles", "calling_ae_titles", "source_networks")


def normalize_ae_title(value: object) -> str:
    """An AE title without its non-significant spaces, or :class:`ValueError` (PS3.5 Table 6.2-1)."""
    if not isinstance(value, str):
        raise ValueError(f"AE title {value!r} is not a string")
    title = value.strip(" ")
    if not 0 < len(title) <= AE_TITLE_MAX:
        raise ValueError(f"AE title {value!r} must be 1 to {AE_TITLE_MAX} characters")
    if any(not " " <= c <= "~" or c == "\\" for c in title):
        raise ValueError(f"AE title {value!r} has a character outside the AE repertoire (control or backslash)")
    return title


@dataclass(frozen=True, slots=True)
class DimseTenant:
    """One tenant's admission rule. Empty ``calling_ae_titles`` / ``source_networks``: any."""

    tenant_id: str
    called_ae_titles: frozenset[str]
    calling_ae_titles: frozenset[str] = frozenset()
    source_networks: tuple[Network, ...] = ()

    def refusal(self, called_ae_title: str, calling_ae_title: str, address: str) -> str | None:
        """Why this association may not use the tenant, or None when it may."""
        if self.calling_ae_titles and calling_ae_title not in self.calling_ae_titles:
            return (
                f"calling AE title {calling_ae_title!r} is not allowed to associate with "
                f"called AE title {called_ae_title!r}"
            )
        if self.source_networks and not _in_networks(address, self.source_networks):
            return (
                f"calling AE title {calling_ae_title!r} from {address or 'an unknown address'} is outside "
                f"the source networks allowed for called AE title {called_ae_title!r}"
            )
        return None


def _in_networks(address: str, networks: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d
    return any(ip in network for network in networks)


@dataclass(frozen=True)
class DimseAdmission:
    """The admission policy of the C-STORE SCP: called AE title → rule → tenant."""

    default: DimseTenant
    rules: Mapping[str, DimseTenant] = field(default_factory=dict)  # called AE title → rule

    @classmethod
    def build(
        cls,
        *,
        default_tenant: str,
        ae_tenants: Mapping[str, str] | None = None,
        allowed_calling_aes: Iterable[str] = (),
        tenants: Iterable[DimseTenant] = (),
    ) -> DimseAdmission:
        """Combine the file's tenants with the ``ae_tenants`` map and the global calling AE
        list; :class:`ValueError` when a called AE title would belong to two tenants."""
        global_calling = frozenset(normalize_ae_title(t) for t in allowed_calling_aes)
        rules: dict[str, DimseTenant] = {}
        for called, tenant_id in (ae_tenants or {}).items():
            title = normalize_ae_title(called)
            rules[title] = DimseTenant(tenant_id, frozenset({title}), global_calling)
        from_file: dict[str, str] = {}
        for tenant in tenants:
            for title in tenant.called_ae_titles:
                if title in from_file:
                    raise ValueError(
                        f"called AE title {title!r} belongs to both tenant {from_file[title]!r} "
                        f"and tenant {tenant.tenant_id!r}"
                    )
                mapped = rules.get(title)
                if mapped is not None and mapped.tenant_id != tenant.tenant_id:
                    raise ValueError(
                        f"called AE title {title!r} maps to tenant {mapped.tenant_id!r} in the AE tenant map "
                        f"but to tenant {tenant.tenant_id!r} in the tenants file"
                    )
                from_file[title] = tenant.tenant_id
                rules[title] = tenant
        default = DimseTenant(default_tenant, frozenset(), global_calling)
        return cls(default, rules)

    def rule_for(self, called_ae_title: str) -> DimseTenant:
        return self.rules.get(called_ae_title.strip(" "), self.default)

    def tenant_for(self, called_ae_title: str) -> str:
        """The tenant a called AE title addresses (admitted or not)."""
        return self.rule_for(called_ae_title).tenant_id

    def admit(self, called_ae_title: str, calling_ae_title: str, address: str) -> str:
        """The TenantID of an association request, or :class:`Forbidden` with the reason."""
        called, calling = called_ae_title.strip(" "), calling_ae_title.strip(" ")
        rule = self.rule_for(called)
        reason = rule.refusal(called, calling, address)
        if reason is not None:
            raise Forbidden(reason)
        return rule.tenant_id


def parse_tenants(text: str, source: str) -> tuple[DimseTenant, ...]:
    """The tenants of a TOML tenants file (shape in the module docstring).

    ``source`` names the file in every error; a :class:`ValueError` names the entry too.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from exc
    unknown = sorted(set(document) - {"tenants"})
    if unknown:
        raise ValueError(f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; expected [tenants.<id>]")
    tables = document.get("tenants", {})
    if not isinstance(tables, dict):
        raise ValueError(f"{source}: 'tenants' must be a table of [tenants.<TenantID>] tables")
    return tuple(_tenant(tenant_id, body, f"{source}: [tenants.{tenant_id}]") for tenant_id, body in tables.items())


def _tenant(tenant_id: str, body: Any, where: str) -> DimseTenant:
    try:
        validate_tenant(tenant_id)
    except InvalidTenant as exc:
        raise ValueError(f"{where}: {exc.reason}") from exc
    if not isinstance(body, dict):
        raise ValueError(f"{where}: must be a table")
    unknown = sorted(set(body) - set(_TENANT_KEYS))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(_TENANT_KEYS)}"
        )
    called = _titles(body.get("called_ae_titles"), f"{where} called_ae_titles")
    if not called:
        raise ValueError(f"{where}: called_ae_titles must list at least one AE title")
    calling = _titles(body.get("calling_ae_titles", []), f"{where} calling_ae_titles")
    networks = []
    for i, item in enumerate(_strings(body.get("source_networks", []), f"{where} source_networks")):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"{where} source_networks[{i}] {item!r}: {exc}") from exc
    return DimseTenant(tenant_id, frozenset(called), frozenset(calling), tuple(networks))


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        raise ValueError(f"{where}: required")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: must be a list of strings")
    return value


def _titles(value: Any, where: str) -> list[str]:
    titles = []
    for i, item in enumerate(_strings(value, where)):
        try:
            titles.append(normalize_ae_title(item))
        except ValueError as exc:
            raise ValueError(f"{where}[{i}]: {exc}") from exc
    return titles
