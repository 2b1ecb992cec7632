"""DICOM Part 10 files (PS3.10 §7): reading just enough to file an instance, and
writing the File Meta Information for a dataset received over DIMSE.

Pure functions over bytes; CPU-bound, so callers run them off the event loop.
Only the attributes that decide where an instance is filed are decoded: the
header up to (0020,000E) SeriesInstanceUID and no further. The rest of the
data set is not decoded but its structure is walked to the end
(``structure.py``): an instance whose file the indexer could not read must be
refused here, with the reason, not acknowledged and then dead-lettered.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from dicomcloud.domain.layout import InstanceKey
from dicomcloud.domain.structure import check_dataset, file_meta_end
from dicomcloud.domain.uids import validate_tenant, validate_uid
from dicomcloud.errors import MalformedDicom, MissingAttribute, PayloadTooLarge

PREAMBLE = b"\x00" * 128 + b"DICM"
# dicomcloud's Implementation Class UID (PS3.7 D.3.3.2), a UUID-derived UID (PS3.5 B.2).
IMPLEMENTATION_CLASS_UID = "2.25.223340316437180845683436577545302432341"
IMPLEMENTATION_VERSION_NAME = "DICOMCLOUD_01"
_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_HEADER_BYTES = 1 << 20  # inflate at most this much of a deflated file's head to read its header
MAX_INFLATED_BYTES = 1 << 28  # a deflated data set inflates to at most this (a deflate bomb does not)
# what pydicom raises on damaged bytes (found by tests/e2e/test_fuzz.py): a value
# whose length does not fit its VR, an unknown VR, a broken deflate stream, ...
_READ_ERRORS = (
    InvalidDicomError,
    BytesLengthException,
    NotImplementedError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    OverflowError,
    OSError,
    TypeError,
    struct.error,
    zlib.error,
)


@dataclass(frozen=True, slots=True)
class ParsedPart10:
    """Where an instance is filed, and what its event says about it."""

    key: InstanceKey
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str
    file_size: int = 0


def _after_series_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag > 0x0020000E)


def normalize_part10(data: bytes | memoryview) -> bytes | memoryview:
    """Tolerant when reading (PS3.10 §7.1): File Meta Information without the
    128-byte preamble and 'DICM' prefix — what pydicom writes for an in-memory
    dataset, and so what some STOW-RS clients send — gets them added; anything
    else is returned unchanged (and refused by :func:`parse_part10`)."""
    if len(data) >= 132 and bytes(data[128:132]) == b"DICM":
        return data
    if len(data) >= 4 and bytes(data[:4]) == b"DICM":
        return b"\x00" * 128 + bytes(data)
    if len(data) >= 8 and bytes(data[:2]) == b"\x02\x00" and bytes(data[4:6]).isalpha():
        return PREAMBLE + bytes(data)  # an explicit VR group 0002 element: file meta, no preamble
    return data


def _parsed(ds: Dataset, tenant_id: str, transfer_syntax_uid: str) -> ParsedPart10:
    try:  # pydicom converts a value when it is first read: that is where damage shows
        values: dict[str, Any] = {kw: ds.get(kw) for kw in (*_REQUIRED, "PatientID")}
    except _READ_ERRORS as exc:
        raise _unreadable(exc) from exc
    for kw in _REQUIRED:
        if values[kw] is None or str(values[kw]).strip() == "":
            raise MissingAttribute(f"{kw} is missing or empty")
    key = InstanceKey(
        validate_tenant(tenant_id),
        validate_uid(str(values["StudyInstanceUID"]), "StudyInstanceUID"),
        validate_uid(str(values["SeriesInstanceUID"]), "SeriesInstanceUID"),
        validate_uid(str(values["SOPInstanceUID"]), "SOPInstanceUID"),
    )
    return ParsedPart10(
        key=key,
        sop_class_uid=validate_uid(str(values["SOPClassUID"]), "SOPClassUID"),
        transfer_syntax_uid=str(UID(validate_uid(transfer_syntax_uid, "TransferSyntaxUID"))),
        patient_id=str(values["PatientID"] or "").replace("\x00", ""),  # PostgreSQL text holds no NUL
    )


def _unreadable(exc: Exception) -> MalformedDicom:
    return MalformedDicom(f"unreadable DICOM: {type(exc).__name__}: {exc}")


def parse_part10(data: bytes | memoryview, tenant_id: str, *, whole: bool = True) -> ParsedPart10:
    """File a Part 10 file (preamble, 'DICM', File Meta Information, data set).

    ``whole``: ``data`` is the whole file, and its data set's structure is checked
    to the end; False for the head of a file (``reindex``), only filed.
    """
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        raise MalformedDicom(
            "not a DICOM Part 10 file: no 'DICM' prefix at byte 128 and no File Meta Information (0002,xxxx)"
        )
    start = file_meta_end(data)
    try:  # pydicom decodes the File Meta Information as it does when the indexer reads the file
        meta = read_dataset(BytesIO(data[132:start]), is_implicit_VR=False, is_little_endian=True)
        tsuid = str(meta.get("TransferSyntaxUID", "") or "")
    except _READ_ERRORS as exc:
        raise _unreadable(exc) from exc
    if not tsuid:
        raise MalformedDicom("the File Meta Information has no TransferSyntaxUID (0002,0010)")
    return _parse(data, start, tsuid, tenant_id, whole)


def parse_dataset(dataset: bytes | memoryview, transfer_syntax_uid: str, tenant_id: str) -> ParsedPart10:
    """File a bare dataset (a C-STORE's Data Set) encoded in ``transfer_syntax_uid``; its
    structure is checked to the end."""
    return _parse(dataset, 0, transfer_syntax_uid, tenant_id, True)


def _parse(data: bytes | memoryview, start: int, transfer_syntax_uid: str, tenant_id: str, whole: bool) -> ParsedPart10:
    """The data set at ``data[start:]``: structure walked (``whole``), then the elements
    up to SeriesInstanceUID decoded by pydicom, as the indexer will decode them."""
    implicit = transfer_syntax_uid == ImplicitVRLittleEndian
    little = transfer_syntax_uid != ExplicitVRBigEndian
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:  # PS3.5 §A.5
        data, start = _inflate(data[start:], whole), 0
    head = data[start : check_dataset(data, implicit=implicit, little=little, start=start)] if whole else data[start:]
    try:
        ds = read_dataset(BytesIO(head), is_implicit_VR=implicit, is_little_endian=little, stop_when=_after_series_uid)
    except _READ_ERRORS as exc:
        raise _unreadable(exc) from exc
    return _parsed(ds, tenant_id, transfer_syntax_uid)


def _inflate(deflated: bytes | memoryview, whole: bool) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(deflated, MAX_INFLATED_BYTES + 1 if whole else _HEADER_BYTES)
    except zlib.error as exc:
        raise MalformedDicom(f"the deflated dataset does not inflate: {exc}") from exc
    if whole and len(data) > MAX_INFLATED_BYTES:
        raise PayloadTooLarge(f"the deflated dataset inflates to more than {MAX_INFLATED_BYTES} bytes")
    if whole and not inflater.eof:  # what follows the end of the stream is padding (PS3.5 §A.5)
        raise MalformedDicom("the deflated dataset is truncated: its deflate stream does not end")
    return data


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian group 0002 element (PS3.5 §7.1.2)."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str = "") -> bytes:
    """Preamble, 'DICM' and File Meta Information (PS3.10 §7.1) for a received dataset."""
    body = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", sop_class_uid.encode()),
            _element(0x0003, b"UI", sop_instance_uid.encode()),
            _element(0x0010, b"UI", transfer_syntax_uid.encode()),
            _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode()),
            _element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode()),
            _element(0x0016, b"AE", source_ae_title.strip().encode("ascii", "replace")[:16])
            if source_ae_title.strip()
            else b"",
        )
    )
    return PREAMBLE + _element(0x0000, b"UL", struct.pack("<I", len(body))) + body
