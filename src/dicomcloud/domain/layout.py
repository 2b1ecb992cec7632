"""The storage layout of ARCHITECTURE §3 — the only code that builds paths.

::

    <TenantID>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    <TenantID>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm.rendition-<TransferSyntaxUID>
    <TenantID>/metadata/<StudyInstanceUID>/<SeriesInstanceUID>.json
    <TenantID>/metadata/<StudyInstanceUID>.json

Paths here are relative (POSIX, ``/``); adapters join them to ROOT. Every
component is validated first, so no input can escape ROOT.

A *rendition* (ARCHITECTURE §6.6) is a viewer-decodable copy of an instance
written by the converter beside its original, which is never overwritten.
Its name does not end in ``.dcm`` on purpose: it is the same SOP instance
(same SOP Instance UID) in another transfer syntax, so whatever lists
``*.dcm`` files — the series listing the metadata builder uses, reindex, an
operator's ``find -name '*.dcm'`` — must not take it for a second instance.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomcloud.domain.uids import validate_tenant, validate_uid
from dicomcloud.errors import InvalidInput

INSTANCE_SUFFIX = ".dcm"
RENDITION_MARK = INSTANCE_SUFFIX + ".rendition-"
METADATA_DIR = "metadata"


@dataclass(frozen=True, slots=True)
class StudyKey:
    tenant_id: str
    study_instance_uid: str

    def __post_init__(self) -> None:
        validate_tenant(self.tenant_id)
        validate_uid(self.study_instance_uid, "StudyInstanceUID")


@dataclass(frozen=True, slots=True)
class SeriesKey:
    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str

    def __post_init__(self) -> None:
        validate_tenant(self.tenant_id)
        validate_uid(self.study_instance_uid, "StudyInstanceUID")
        validate_uid(self.series_instance_uid, "SeriesInstanceUID")

    @property
    def study(self) -> StudyKey:
        return StudyKey(self.tenant_id, self.study_instance_uid)


@dataclass(frozen=True, slots=True)
class InstanceKey:
    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        validate_tenant(self.tenant_id)
        validate_uid(self.study_instance_uid, "StudyInstanceUID")
        validate_uid(self.series_instance_uid, "SeriesInstanceUID")
        validate_uid(self.sop_instance_uid, "SOPInstanceUID")

    @property
    def series(self) -> SeriesKey:
        return SeriesKey(self.tenant_id, self.study_instance_uid, self.series_instance_uid)


def instance_path(key: InstanceKey) -> str:
    return f"{key.tenant_id}/{key.study_instance_uid}/{key.series_instance_uid}/{key.sop_instance_uid}{INSTANCE_SUFFIX}"


def rendition_path(key: InstanceKey, transfer_syntax_uid: str) -> str:
    """Where the rendition of an instance in ``transfer_syntax_uid`` lives, beside the original."""
    syntax = validate_uid(transfer_syntax_uid, "TransferSyntaxUID")
    return f"{series_dir(key.series)}/{key.sop_instance_uid}{RENDITION_MARK}{syntax}"


def is_rendition_name(name: str) -> bool:
    """Whether a file name (no folder) is that of a rendition."""
    return RENDITION_MARK in name


def series_dir(key: SeriesKey) -> str:
    return f"{key.tenant_id}/{key.study_instance_uid}/{key.series_instance_uid}"


def study_dir(key: StudyKey) -> str:
    return f"{key.tenant_id}/{key.study_instance_uid}"


def series_metadata_path(key: SeriesKey) -> str:
    return f"{key.tenant_id}/{METADATA_DIR}/{key.study_instance_uid}/{key.series_instance_uid}.json"


def study_metadata_path(key: StudyKey) -> str:
    return f"{key.tenant_id}/{METADATA_DIR}/{key.study_instance_uid}.json"


def parse_instance_path(path: str) -> InstanceKey:
    """Inverse of :func:`instance_path`; raises :class:`InvalidInput` if not one."""
    parts = path.split("/")
    if len(parts) != 4 or not parts[3].endswith(INSTANCE_SUFFIX):
        raise InvalidInput(f"{path!r} is not <tenant>/<study>/<series>/<sop>.dcm")
    sop = parts[3][: -len(INSTANCE_SUFFIX)]
    return InstanceKey(parts[0], parts[1], parts[2], sop)
