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

from dicomcloud.domain.layout import InstanceKey, instance_path
from dicomcloud.domain.messages import LOG_QUEUE, STORAGE_QUEUE, InstanceStored, Source, encode
from dicomcloud.domain.part10 import ParsedPart10, file_meta, normalize_part10, parse_dataset, parse_part10
from dicomcloud.errors import DatasetMismatch, DicomCloudError, PayloadTooLarge, Unavailable
from dicomcloud.ports import BlobStore, Bus


@dataclass(frozen=True, slots=True)
class StoredInstance:
    key: InstanceKey
    sop_class_uid: str
    transfer_syntax_uid: str
    file_size: int


def check_expected(
    parsed: ParsedPart10,
    *,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
) -> None:
    """The dataset must agree with what the request said it was (PS3.4 B.2.3, PS3.18 §10.5)."""
    if study_instance_uid and parsed.key.study_instance_uid != study_instance_uid:
        raise DatasetMismatch(
            f"StudyInstanceUID {parsed.key.study_instance_uid} does not match "
            f"the study {study_instance_uid} of the request"
        )
    if sop_instance_uid and parsed.key.sop_instance_uid != sop_instance_uid:
        raise DatasetMismatch(
            f"SOPInstanceUID {parsed.key.sop_instance_uid} in the dataset differs from "
            f"AffectedSOPInstanceUID {sop_instance_uid} of the request"
        )
    if sop_class_uid and parsed.sop_class_uid != sop_class_uid:
        raise DatasetMismatch(
            f"SOPClassUID {parsed.sop_class_uid} in the dataset differs from "
            f"AffectedSOPClassUID {sop_class_uid} of the request"
        )



def instance_stored(parsed: ParsedPart10, size: int, received_at: str, source: Source) -> InstanceStored:
    """The event that says an instance's file is durable at its place in the layout."""
    path = instance_path(parsed.key)
    return InstanceStored(
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
        received_at=received_at,
        source=source,
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
    ) -> ParsedPart10:
        """Validate a Part 10 file (STOW-RS) and write it atomically, not yet durable.

        Blocking: run in a thread. The caller makes the file durable with
        :meth:`make_durable` *while* the event is published, so the two
        flushes overlap; Success waits for both. Should the process die in
        between, the sender got no Success and sends again.
        """
        self._check_size(len(data))
        data = normalize_part10(data)
        parsed = parse_part10(data, tenant_id)
        check_expected(parsed, study_instance_uid=expected_study_instance_uid)
        self._write(parsed, [data])
        return replace(parsed, file_size=len(data))

    def write_dataset(
        self,
        dataset: bytes | memoryview,
        transfer_syntax_uid: str,
        tenant_id: str,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        source_ae_title: str = "",
    ) -> ParsedPart10:
        """Validate a C-STORE dataset and write it as a Part 10 file (blocking).

        The File Meta Information is written by us (PS3.10 §7.1) and the
        dataset bytes follow exactly as received, without being decoded.
        """
        self._check_size(len(dataset))
        parsed = parse_dataset(dataset, transfer_syntax_uid, tenant_id)
        check_expected(parsed, sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid)
        meta = file_meta(parsed.sop_class_uid, parsed.key.sop_instance_uid, transfer_syntax_uid, source_ae_title)
        self._write(parsed, [meta, dataset])
        return replace(parsed, file_size=len(meta) + len(dataset))

    def _check_size(self, size: int) -> None:
        if size > self._max:
            raise PayloadTooLarge(f"instance of {size} bytes exceeds the limit of {self._max}")

    def _write(self, parsed: ParsedPart10, parts: list[bytes | memoryview]) -> None:
        try:
            self._blobs.write_atomic(instance_path(parsed.key), parts, sync=False)
        except OSError as exc:
            raise Unavailable(f"could not write the instance: {exc.strerror or exc}") from exc

    def make_durable(self, parsed: ParsedPart10) -> None:
        """fsync the written file and its directory (blocking)."""
        try:
            self._blobs.sync(instance_path(parsed.key))
        except OSError as exc:
            raise Unavailable(f"could not make the instance durable: {exc.strerror or exc}") from exc

    async def publish(self, parsed: ParsedPart10, source: Source) -> StoredInstance:
        items, stored = self._event(parsed, source)
        try:
            await self._bus.publish(items)
        except DicomCloudError:
            raise
        except Exception as exc:
            raise Unavailable(f"the message bus did not accept the event: {exc}") from exc
        return stored

    def publish_blocking(self, parsed: ParsedPart10, source: Source) -> StoredInstance:
        """:meth:`publish` for a DIMSE handler thread: no hop through the event loop."""
        items, stored = self._event(parsed, source)
        try:
            self._bus.publish_blocking(items)
        except DicomCloudError:
            raise
        except Exception as exc:
            raise Unavailable(f"the message bus did not accept the event: {exc}") from exc
        return stored

    def _event(self, parsed: ParsedPart10, source: Source) -> tuple[list[tuple[str, str, bytes]], StoredInstance]:
        event = instance_stored(parsed, parsed.file_size, datetime.now(UTC).isoformat(), source)
        value = encode(event)
        key = parsed.key.study_instance_uid
        stored = StoredInstance(parsed.key, parsed.sop_class_uid, parsed.transfer_syntax_uid, parsed.file_size)
        return [(STORAGE_QUEUE, key, value), (LOG_QUEUE, key, value)], stored

    async def store(
        self,
        data: bytes | memoryview,
        tenant_id: str,
        source: Source,
        *,
        expected_study_instance_uid: str | None = None,
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
        )
        stored, _ = await asyncio.gather(
            self.publish(parsed, source), asyncio.to_thread(self.make_durable, parsed)
        )
        return stored
