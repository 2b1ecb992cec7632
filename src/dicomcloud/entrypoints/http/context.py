"""What a DICOMweb request handler needs: the archive, the tenant, the base URL.

The tenant comes from the route (``/tenants/{tenant}/dicom-web``) or is the
default tenant (``/dicom-web``) — never from a free-form header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from dicomcloud.domain.uids import validate_tenant, validate_uid

if TYPE_CHECKING:
    from dicomcloud.bootstrap import Archive


def archive(request: Request) -> Archive:
    result: Archive = request.app.state.archive
    return result


def tenant_of(request: Request) -> str:
    tenant = request.path_params.get("tenant")
    if tenant is None:
        return archive(request).settings.default_tenant
    return validate_tenant(tenant)


def tenant_prefix(tenant_id: str, default_tenant: str) -> str:
    """The path under which a tenant's DICOMweb service lives."""
    return "/dicom-web" if tenant_id == default_tenant else f"/tenants/{tenant_id}/dicom-web"


def service_url(request: Request) -> str:
    """Absolute base URL of the DICOMweb service this request addressed."""
    base = str(request.base_url).rstrip("/")
    return base + tenant_prefix(tenant_of(request), archive(request).settings.default_tenant)


def path_uid(request: Request, name: str, keyword: str) -> str:
    return validate_uid(request.path_params[name], keyword)
