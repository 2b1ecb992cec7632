"""Ingest one instance (C-STORE or STOW-RS): validate, write durably, publish.

PS3.4 B.2 (Storage SCP) / PS3.18 §10.5 (STOW-RS). The single path both
entry points share. Success is returned only once the file is fsync'ed and
renamed into place *and* the InstanceStored event is durable on the bus
(ARCHITECTURE §6.1); otherwise an error from the tree in ``errors.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from io import BytesIO

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dicomcloud.domain.layout import InstanceKey, instance_path
from dicomcloud.domain.messages import LOG_QUEUE, STORAGE_QUEUE, InstanceStored, Source, encode
from dicomcloud.domain.uids import validate_tenant, validate_uid
from dicomcloud.errors import (
    DatasetMismatch,
    DicomCloudError,
    MalformedDicom,
    MissingAttribute,
    PayloadTooLarge,
    Unavailable,
)
from dicomcloud.ports import BlobStore, Bus

_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
]


@dataclass(frozen=True, slots=True)
class StoredInstance:
    key: InstanceKey
    sop_class_uid: str
    transfer_syntax_uid: str
    file_size: int


@dataclass(frozen=True, slots=True)
class ParsedPart10:
    key: InstanceKey
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str
    file_size: int = 0


def _after_series_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag > 0x0020000E)


PREAMBLE = b"\x00" * 128 + b"DICM"


def normalize_part10(data: bytes | memoryview) -> bytes | memoryview:
    """Tolerant when reading (PS3.10 §7.1): file meta without the 128-byte preamble
    and 'DICM' prefix — what pydicom writes for an in-memory dataset, and so what
    some STOW-RS clients send — gets them added; everything else is left as is."""
    if len(data) >= 132 and bytes(data[128:132]) == b"DICM":
        return data
    if len(data) >= 4 and bytes(data[:4]) == b"DICM":
        return b"\x00" * 128 + bytes(data)
    if len(data) >= 8 and bytes(data[:2]) == b"\x02\x00" and bytes(data[4:6]).isalpha():
        return PREAMBLE + bytes(data)  # explicit VR group 0002 element: file meta, no preamble
    return data


def parse_part10(data: bytes | memoryview, tenant_id: str) -> ParsedPart10:
    """Read just enough of a Part 10 file (PS3.10 §7) to file it. CPU-bound."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        raise MalformedDicom(
            "not a DICOM Part 10 file: no 'DICM' prefix at byte 128 and no File Meta Information (0002,xxxx)"
        )
    try:
        # Everything needed precedes (0020,000E): stop reading there.
        ds = read_partial(BytesIO(data), stop_when=_after_series_uid, defer_size=None)
        tsuid = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
        values = {kw: ds.get(kw) for kw in _HEADER_TAGS}
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, TypeError) as exc:
        raise MalformedDicom(f"unreadable DICOM: {exc}") from exc
    except Exception as exc:
        raise MalformedDicom(f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    if not tsuid:
        raise MalformedDicom("file meta information has no TransferSyntaxUID (0002,0010)")
    validate_uid(tsuid, "TransferSyntaxUID")
    for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
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
        transfer_syntax_uid=str(UID(tsuid)),
        patient_id=str(values["PatientID"] or ""),
    )


class Ingest:
    """The use case. ``store`` is safe to call from any thread via the loop."""

    def __init__(self, blobs: BlobStore, bus: Bus, *, max_instance_bytes: int) -> None:
        self._blobs = blobs
        self._bus = bus
        self._max = max_instance_bytes

    def write(
        self,
        data: bytes | memoryview,
        tenant_id: str,
        *,
        expected_study_instance_uid: str | None = None,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
    ) -> ParsedPart10:
        """Validate and write the file atomically, not yet durable (blocking; run in a thread).

        The caller makes it durable with :meth:`make_durable` *while* the event
        is published, so the two flushes overlap; Success waits for both. Should
        the process die in between, the sender got no Success and sends again;
        a consumer that finds no file dead-letters the event.
        """
        if len(data) > self._max:
            raise PayloadTooLarge(f"instance of {len(data)} bytes exceeds the limit of {self._max}")
        data = normalize_part10(data)
        parsed = parse_part10(data, tenant_id)
        if expected_study_instance_uid and parsed.key.study_instance_uid != expected_study_instance_uid:
            raise DatasetMismatch(
                f"StudyInstanceUID {parsed.key.study_instance_uid} does not match "
                f"the study {expected_study_instance_uid} of the request"
            )
        if expected_sop_instance_uid and parsed.key.sop_instance_uid != expected_sop_instance_uid:
            raise DatasetMismatch(
                f"SOPInstanceUID {parsed.key.sop_instance_uid} in the dataset differs from "
                f"AffectedSOPInstanceUID {expected_sop_instance_uid} of the request"
            )
        if expected_sop_class_uid and parsed.sop_class_uid != expected_sop_class_uid:
            raise DatasetMismatch(
                f"SOPClassUID {parsed.sop_class_uid} in the dataset differs from "
                f"AffectedSOPClassUID {expected_sop_class_uid} of the request"
            )
        try:
            self._blobs.write_atomic(instance_path(parsed.key), data, sync=False)
        except OSError as exc:
            raise Unavailable(f"could not write the instance: {exc.strerror or exc}") from exc
        return replace(parsed, file_size=len(data))

    def make_durable(self, parsed: ParsedPart10) -> None:
        """fsync the written file and its directory (blocking)."""
        try:
            self._blobs.sync(instance_path(parsed.key))
        except OSError as exc:
            raise Unavailable(f"could not make the instance durable: {exc.strerror or exc}") from exc

    async def publish(self, parsed: ParsedPart10, size: int, source: Source) -> StoredInstance:
        items, stored = self._event(parsed, size, source)
        try:
            await self._bus.publish(items)
        except DicomCloudError:
            raise
        except Exception as exc:
            raise Unavailable(f"the message bus did not accept the event: {exc}") from exc
        return stored

    def publish_blocking(self, parsed: ParsedPart10, size: int, source: Source) -> StoredInstance:
        """:meth:`publish` for a DIMSE handler thread: no hop through the event loop."""
        items, stored = self._event(parsed, size, source)
        try:
            self._bus.publish_blocking(items)
        except DicomCloudError:
            raise
        except Exception as exc:
            raise Unavailable(f"the message bus did not accept the event: {exc}") from exc
        return stored

    def _event(
        self, parsed: ParsedPart10, size: int, source: Source
    ) -> tuple[list[tuple[str, str, bytes]], StoredInstance]:
        path = instance_path(parsed.key)
        event = InstanceStored(
            tenant_id=parsed.key.tenant_id,
            study_instance_uid=parsed.key.study_instance_uid,
            series_instance_uid=parsed.key.series_instance_uid,
            sop_instance_uid=parsed.key.sop_instance_uid,
            sop_class_uid=parsed.sop_class_uid,
            transfer_syntax_uid=parsed.transfer_syntax_uid,
            patient_id=parsed.patient_id,
            file_name=path.rsplit("/", 1)[1],
            file_path=path,
            file_size=size,
            received_at=datetime.now(UTC).isoformat(),
            source=source,
        )
        value = encode(event)
        key = parsed.key.study_instance_uid
        stored = StoredInstance(parsed.key, parsed.sop_class_uid, parsed.transfer_syntax_uid, size)
        return [(STORAGE_QUEUE, key, value), (LOG_QUEUE, key, value)], stored

    async def store(
        self,
        data: bytes | memoryview,
        tenant_id: str,
        source: Source,
        *,
        expected_study_instance_uid: str | None = None,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
    ) -> StoredInstance:
        """Validate, write durably and publish one Part 10 instance.

        Raises a :class:`DicomCloudError`; its DIMSE status / HTTP status / STOW
        FailureReason come from the tables in ``errors.py``.
        """
        parsed = await asyncio.to_thread(
            self.write,
            data,
            tenant_id,
            expected_study_instance_uid=expected_study_instance_uid,
            expected_sop_instance_uid=expected_sop_instance_uid,
            expected_sop_class_uid=expected_sop_class_uid,
        )
        stored, _ = await asyncio.gather(
            self.publish(parsed, parsed.file_size, source), asyncio.to_thread(self.make_durable, parsed)
        )
        return stored
