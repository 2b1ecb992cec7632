"""The consumer's use case: index stored instances (ARCHITECTURE §2 ``consumer``).

For a batch of InstanceStored events: read each file's header (off the event
loop), upsert patient/study/series state in the index, then publish
DicomImageMeta (every instance) and DicomStateMeta (every changed series),
and ConversionRequested for every instance stored in a transfer syntax the
viewer cannot decode (``domain/viewer_syntaxes.py``; again on redelivery: the
converter finds the rendition in place and writes nothing).
Outcomes are named: a record is *done*, or *dead-lettered* with its reason
(a file that cannot be read will never succeed); a store failure raises so
that the whole batch is *retried later*, uncommitted. Last, the read cache's
generations of the batch's studies move (``usecases/read_cache.py``); a cache
that cannot be reached does not hold the batch up (:meth:`ReadCache.invalidate`
never raises: it owes an epoch bump instead).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomcloud.domain.header import InstanceRecord
from dicomcloud.domain.messages import (
    CONVERSION_QUEUE,
    DICOM_IMAGE_QUEUE,
    DICOM_STATE_QUEUE,
    ConversionRequested,
    DicomImageMeta,
    DicomStateMeta,
    InstanceStored,
    decode,
    encode,
)
from dicomcloud.domain.viewer_syntaxes import PixelTraits, conversion_target, needs_conversion
from dicomcloud.errors import DicomCloudError, InvalidInput
from dicomcloud.ports import BlobStore, Bus, Index, Record
from dicomcloud.usecases.read_cache import ReadCache


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    reason: str


HEAD_BYTES = 256 * 1024


def _read_header(path: Path, transfer_syntax_uid: str) -> Dataset:
    """The dataset up to Pixel Data, from one read of the file's head (few GIL hand-overs).

    The whole file when the header does not end within the head: a head cut inside
    a long header (a waveform, an RT structure set) can fail to parse, and a deflated
    data set inflates only as a whole (PS3.5 §A.5).
    """
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        return dcmread(path, stop_before_pixels=True)
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    buffer = BytesIO(head)
    try:
        ds = dcmread(buffer, stop_before_pixels=True)
    except Exception:
        if len(head) < HEAD_BYTES:
            raise  # that was the whole file
        return dcmread(path, stop_before_pixels=True)
    if len(head) == HEAD_BYTES and buffer.tell() >= len(head) - 16:
        ds = dcmread(path, stop_before_pixels=True)  # a header longer than the head
    return ds


def _pixel_traits(ds: Dataset) -> PixelTraits:
    """Tolerant when reading (``header.py``): pixel attributes that do not convert
    (a BitsAllocated of the wrong VR) make an instance without known pixels, not a dead letter."""
    try:
        return PixelTraits.from_dataset(ds)
    except Exception:
        return PixelTraits(has_pixels=False)


def read_instance(path: Path, tenant_id: str, transfer_syntax_uid: str) -> tuple[InstanceRecord, PixelTraits]:
    """Header of a stored file → InstanceRecord and its pixel traits (CPU + I/O; run in a thread)."""
    try:
        ds = _read_header(path, transfer_syntax_uid)
        # Ingest refused what pydicom cannot parse (``domain/structure.py``) and optional
        # values that do not convert are left out; what still raises here (a file damaged
        # after it was stored) dead-letters this record, it does not fail the batch
        return InstanceRecord.from_dataset(ds, tenant_id, transfer_syntax_uid), _pixel_traits(ds)
    except FileNotFoundError as exc:
        raise InvalidInput(f"stored file {path.name} is missing") from exc
    except DicomCloudError:
        raise
    except Exception as exc:
        raise InvalidInput(f"stored file {path.name} is unreadable: {exc}") from exc


_Read = tuple[InstanceStored, InstanceRecord, PixelTraits]


class IndexInstances:
    """``viewer_transfer_syntaxes``: route the others to the converter; None: route nothing (reindex)."""

    def __init__(
        self,
        blobs: BlobStore,
        index: Index,
        bus: Bus,
        cache: ReadCache | None = None,
        viewer_transfer_syntaxes: Sequence[str] | None = None,
    ) -> None:
        self._blobs = blobs
        self._index = index
        self._bus = bus
        self._cache = cache
        self._viewer = frozenset(viewer_transfer_syntaxes) if viewer_transfer_syntaxes is not None else None

    def _read_all(self, records: list[Record]) -> tuple[list[_Read], list[DeadLetter]]:
        good: list[_Read] = []
        dead: list[DeadLetter] = []
        for record in records:
            try:
                event = decode(record.value)
                if not isinstance(event, InstanceStored):
                    raise InvalidInput(f"{type(event).__name__} does not belong on {record.topic}")
                header, traits = read_instance(
                    self._blobs.absolute(event.file_path),
                    event.tenant_id,
                    event.transfer_syntax_uid,
                )
                if header.key.sop_instance_uid != event.sop_instance_uid:
                    raise InvalidInput("the stored file's SOPInstanceUID differs from the event's")
            except DicomCloudError as exc:
                dead.append(DeadLetter(record, exc.reason))
                continue
            good.append((event, header, traits))
        return good, dead

    async def handle(self, records: list[Record]) -> list[DeadLetter]:
        good, dead = await asyncio.to_thread(self._read_all, records)
        if not good:
            return dead
        changes = await self._index.apply([(header, event.received_at) for event, header, _ in good])
        now = datetime.now(UTC).isoformat()
        out: list[tuple[str, str, bytes]] = []
        for event, header, traits in good:
            meta = DicomImageMeta(
                tenant_id=event.tenant_id,
                study_instance_uid=event.study_instance_uid,
                series_instance_uid=event.series_instance_uid,
                sop_instance_uid=event.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                transfer_syntax_uid=event.transfer_syntax_uid,
                patient_id=header.patient_id,
                file_path=event.file_path,
                file_size=event.file_size,
                received_at=event.received_at,
                values={**header.study_values, **header.series_values, **header.instance_values},
                study=header.study,
                series=header.series,
                instance=header.instance,
            )
            out.append((DICOM_IMAGE_QUEUE, event.study_instance_uid, encode(meta)))
            if self._viewer is not None and needs_conversion(event.transfer_syntax_uid, self._viewer):
                request = ConversionRequested(
                    tenant_id=event.tenant_id,
                    study_instance_uid=event.study_instance_uid,
                    series_instance_uid=event.series_instance_uid,
                    sop_instance_uid=event.sop_instance_uid,
                    file_path=event.file_path,
                    source_transfer_syntax_uid=event.transfer_syntax_uid,
                    target_transfer_syntax_uid=conversion_target(event.transfer_syntax_uid, traits, self._viewer),
                    requested_at=now,
                )
                out.append((CONVERSION_QUEUE, event.study_instance_uid, encode(request)))
        for series, study in changes:
            state = DicomStateMeta(
                tenant_id=series.key.tenant_id,
                patient_id=study.patient_id,
                study_instance_uid=series.key.study_instance_uid,
                series_instance_uid=series.key.series_instance_uid,
                revision=series.revision,
                number_of_series_related_instances=series.number_of_series_related_instances,
                number_of_study_related_series=study.number_of_study_related_series,
                number_of_study_related_instances=study.number_of_study_related_instances,
                modality=series.modality,
                updated_at=now,
            )
            out.append((DICOM_STATE_QUEUE, series.key.study_instance_uid, encode(state)))
        await self._bus.publish(out)
        if self._cache is not None:
            # Last, once the index is committed; every study of the batch, changed or not:
            # a redelivered batch (say, after the publish above failed) changes no row.
            await self._cache.invalidate({(event.tenant_id, event.study_instance_uid) for event, _, _ in good})
        return dead
