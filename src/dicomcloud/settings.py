"""Typed settings, read once in ``main()`` from options and ``DICOMCLOUD_*`` variables.

Precedence: command-line option > environment variable > default. Secrets
(the password in a database URL) are masked whenever settings are shown.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dicomcloud.domain.authorization import check_algorithms
from dicomcloud.domain.tenancy import DimseAdmission, DimseTenant, parse_tenants
from dicomcloud.domain.uids import validate_tenant
from dicomcloud.domain.viewer_syntaxes import DEFAULT_VIEWER_TRANSFER_SYNTAXES, validate_viewer_syntaxes
from dicomcloud.errors import InvalidTenant

ENV_PREFIX = "DICOMCLOUD_"
MIN_PDU_BYTES = 4096  # the smallest maximum PDU length we advertise (DCMTK's minimum too)


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./dicomcloud-data")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    dimse_host: str = "0.0.0.0"
    dimse_port: int = 11112
    ae_title: str = "DICOMCLOUD"
    # SO_REUSEPORT on the DIMSE listener: several storescp processes share one port and
    # the kernel spreads associations over them (distributed mode, one per core)
    dimse_reuse_port: bool = False
    database_url: str = ""  # empty: embedded PostgreSQL under data_dir/pg
    bus_url: str = ""  # empty: embedded durable journal under data_dir/bus; kafka://host:port[?…]
    redis_url: str = ""  # empty: in-process cache; redis://host:port/db
    cache_ttl_seconds: int = 3600  # upper bound on how long any cached answer lives
    default_tenant: str = "default"
    # called AE title -> TenantID; a called AE not listed maps to default_tenant
    ae_tenants: Mapping[str, str] = field(default_factory=dict)
    # calling AE titles allowed to associate; empty = any
    allowed_calling_aes: tuple[str, ...] = ()
    # per-tenant DIMSE admission (called AE titles, allowed calling AE titles and source
    # networks): a TOML file, see domain/tenancy.py; read once at start
    dimse_tenants_file: str = ""
    # DIMSE limits: the largest PDU we accept (0 = no limit), association timeouts
    dimse_max_pdu_bytes: int = 16 * 1024 * 1024
    dimse_acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    dimse_network_timeout: float = 60.0
    dimse_max_associations: int = 64
    # OAuth2 resource server (entrypoints/http/auth.py); auth_issuer empty = no authentication,
    # which is allowed only on a loopback listener unless allow_anonymous is set
    auth_issuer: str = ""
    auth_jwks_url: str = ""  # empty: jwks_uri of the issuer's OpenID configuration
    auth_audience: str = "dicomcloud"
    auth_algorithms: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
    auth_leeway_seconds: int = 30
    auth_read_scope: str = "dicomweb.read"
    auth_write_scope: str = "dicomweb.write"
    auth_delete_scope: str = "dicomweb.delete"
    auth_tenant_claim: str = "tenants"
    auth_jwks_min_refresh_seconds: float = 10.0  # an unknown kid refreshes the keys at most this often
    auth_jwks_ttl_seconds: int = 3600
    auth_provider_timeout: float = 5.0
    allow_anonymous: bool = False
    # HTTP limits: a request body that sends nothing for this long is cut off (408)
    http_body_timeout: float = 60.0
    public_url: str = ""  # base URL written into BulkDataURIs; empty: from http host/port
    cors_origins: tuple[str, ...] = ("*",)
    max_instance_bytes: int = 2 * 1024**3
    max_stow_bytes: int = 4 * 1024**3
    qido_max_limit: int = 10_000
    qido_default_limit: int = 1_000
    # processes for rendering (/rendered, /thumbnail, WADO-URI images): -1 one per core,
    # 0 threads of the server process
    render_workers: int = -1
    webworker_interval: float = 5.0  # the safety-net scan; events trigger builds sooner
    webworker_quiet_seconds: float = 0.5
    webworker_max_delay_seconds: float = 2.0
    # what the target viewer decodes; an instance stored in another syntax gets a rendition
    # (domain/viewer_syntaxes.py; default: Cornerstone3D 5.x, ARCHITECTURE §8)
    viewer_transfer_syntaxes: tuple[str, ...] = DEFAULT_VIEWER_TRANSFER_SYNTAXES
    log_level: str = "INFO"

    @property
    def root(self) -> Path:
        return self.data_dir / "files"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::", "") else self.http_host
        return f"http://{host}:{self.http_port}"

    @functools.cached_property
    def dimse_admission(self) -> DimseAdmission:
        """Who may associate with which called AE title, and its tenant (domain/tenancy.py).
        :func:`load` builds it, so the tenants file is read once, at start."""
        return read_dimse_admission(self)

    def masked(self) -> dict[str, Any]:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("database_url", "bus_url", "redis_url"):
            shown[name] = mask_url(str(shown[name]))
        return shown


def mask_url(url: str) -> str:
    """Hide the secrets of a URL: the password of ``scheme://[user]:password@host`` (Redis
    URLs often have no user) and query parameters such as ``?password=``."""
    url = re.sub(r"(//[^/:@?#]*:)[^@/?#]*@", r"\1***@", url)
    return re.sub(r"([?&](?:password|passwd|pass|sslpassword|secret|token)=)[^&#]*", r"\1***", url, flags=re.I)


def read_dimse_admission(settings: Settings) -> DimseAdmission:
    """Read ``dimse_tenants_file`` (if set) and combine it with ``ae_tenants`` and
    ``allowed_calling_aes``; :class:`ValueError` naming the file and the entry."""
    tenants: tuple[DimseTenant, ...] = ()
    path = settings.dimse_tenants_file
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"DIMSE tenants file {path}: cannot be read: {exc}") from exc
        tenants = parse_tenants(text, f"DIMSE tenants file {path}")
    try:
        return DimseAdmission.build(
            default_tenant=settings.default_tenant,
            ae_tenants=settings.ae_tenants,
            allowed_calling_aes=settings.allowed_calling_aes,
            tenants=tenants,
        )
    except ValueError as exc:
        where = f"DIMSE tenants file {path}" if path else "DIMSE tenants"
        raise ValueError(f"{where}: {exc}") from exc


def _parse_map(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        ae, sep, tenant = item.partition("=")
        if not sep:
            raise ValueError(f"AE tenant map entry {item!r} is not AE=TENANT")
        try:
            result[ae.strip()] = validate_tenant(tenant.strip())
        except InvalidTenant as exc:
            raise ValueError(f"AE tenant map entry {item!r}: {exc.reason}") from exc
    return result


def _convert(name: str, raw: str, current: Any) -> Any:
    if name == "ae_tenants":
        return _parse_map(raw)
    if isinstance(current, tuple):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if isinstance(current, Path):
        return Path(raw)
    if isinstance(current, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    return raw


def load(overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from defaults, then ``DICOMCLOUD_*`` variables, then ``overrides``."""
    env = os.environ if env is None else env
    settings = Settings()
    changes: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None and raw != "":
            changes[f.name] = _convert(f.name, raw, getattr(settings, f.name))
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        current = getattr(settings, name)
        changes[name] = _convert(name, value, current) if isinstance(value, str) else value
    settings = replace(settings, **changes)
    try:
        validate_tenant(settings.default_tenant)
    except InvalidTenant as exc:
        raise ValueError(f"default tenant: {exc.reason}") from exc
    validate_viewer_syntaxes(settings.viewer_transfer_syntaxes)
    _check_auth(settings)
    if not 0 < len(settings.ae_title) <= 16:
        raise ValueError("the AE title must be 1 to 16 characters")
    if settings.dimse_max_pdu_bytes != 0 and not MIN_PDU_BYTES <= settings.dimse_max_pdu_bytes < 2**32:
        raise ValueError(
            f"the maximum DIMSE PDU length must be 0 (no limit) or {MIN_PDU_BYTES} to {2**32 - 1} bytes, "
            f"not {settings.dimse_max_pdu_bytes}"
        )
    _ = settings.dimse_admission  # reads and checks the tenants file, once
    return settings


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _check_auth(settings: Settings) -> None:
    """Fail closed: no DICOMweb without authentication on a reachable address, unless asked."""
    if not settings.auth_issuer:
        if settings.http_host not in _LOOPBACK and not settings.allow_anonymous:
            raise ValueError(
                f"refusing to serve DICOMweb on {settings.http_host} without authentication: set "
                "DICOMCLOUD_AUTH_ISSUER (OAuth2) or, for a trusted network, DICOMCLOUD_ALLOW_ANONYMOUS=true"
            )
        return
    if not re.match(r"^https?://[^/\s]+", settings.auth_issuer):
        raise ValueError(f"auth_issuer {settings.auth_issuer!r} is not an http(s) URL")
    if settings.auth_jwks_url and not re.match(r"^https?://[^/\s]+", settings.auth_jwks_url):
        raise ValueError(f"auth_jwks_url {settings.auth_jwks_url!r} is not an http(s) URL")
    check_algorithms(settings.auth_algorithms)
    if not 0 <= settings.auth_leeway_seconds <= 300:
        raise ValueError("auth_leeway_seconds must be between 0 and 300")
    if not settings.auth_audience:
        raise ValueError("auth_audience may not be empty when authentication is on")
