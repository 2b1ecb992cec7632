"""What a DICOMweb request handler needs: the archive, the tenant, the base URL.

The tenant comes from the route (``/tenants/{tenant}/dicom-web``) or is the
default tenant (``/dicom-web``) — never from a free-form header.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from dicomcloud.domain.layout import InstanceKey, SeriesKey, StudyKey
from dicomcloud.domain.uids import validate_tenant, validate_uid
from dicomcloud.errors import NotFound

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
    """Absolute base URL of the DICOMweb service this request addressed.

    From the Host header, with one repair: some clients send ``Host:
    127.0.0.1`` without the port when talking to us directly on another
    port, and URLs built from that would point at port 80. A portless Host
    naming this very listener gets the configured base URL instead (a
    portless public name, e.g. behind a proxy, is kept as sent).
    """
    settings = archive(request).settings
    if settings.public_url:
        base = settings.base_url
    else:
        host = request.headers.get("host", "")
        port = host.rpartition("]")[2].partition(":")[2]
        if not port and request.url.hostname in _LOCAL_NAMES | {settings.http_host}:
            base = settings.base_url
        else:
            base = str(request.base_url).rstrip("/")
    return base + tenant_prefix(tenant_of(request), settings.default_tenant)


_LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def path_uid(request: Request, name: str, keyword: str) -> str:
    return validate_uid(request.path_params[name], keyword)


def study_key(request: Request) -> StudyKey:
    """The study a ``/studies/{study}/…`` route addresses, in the request's tenant."""
    return StudyKey(tenant_of(request), path_uid(request, "study", "StudyInstanceUID"))


def series_key(request: Request) -> SeriesKey:
    return SeriesKey(
        tenant_of(request),
        path_uid(request, "study", "StudyInstanceUID"),
        path_uid(request, "series", "SeriesInstanceUID"),
    )


def instance_key(request: Request) -> InstanceKey:
    return InstanceKey(
        tenant_of(request),
        path_uid(request, "study", "StudyInstanceUID"),
        path_uid(request, "series", "SeriesInstanceUID"),
        path_uid(request, "instance", "SOPInstanceUID"),
    )


async def instances_of(request: Request, key: StudyKey | SeriesKey) -> list[InstanceKey]:
    """The instances of a study or series, or :class:`NotFound` naming what is missing."""
    keys = await archive(request).index.instances(key)
    if not keys:
        if isinstance(key, SeriesKey):
            raise NotFound(f"series {key.series_instance_uid} not found in study {key.study_instance_uid}")
        raise NotFound(f"study {key.study_instance_uid} not found")
    return keys
