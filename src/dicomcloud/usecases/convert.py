"""The converter's use case: a viewer-decodable rendition beside each original
(ARCHITECTURE §2 ``converter``, §6.6).

For every ConversionRequested on ``conversion_queue`` (the consumer routes
there what the viewer cannot decode, ``domain/viewer_syntaxes.py``): read the
original, decode it with pydicom 3 (``Dataset.decompress()`` and the installed
plugins), re-encode it losslessly in the requested syntax (``compress()``, or
native), and write it at :func:`~dicomcloud.domain.layout.rendition_path`
atomically. The original is only ever read. Then one ConversionResult per
attempt goes to ``conversion_result_queue`` for the loader's
``warehouse.conversion`` table.

Outcomes, named:

- **success** — the rendition is written; its mtime is set to the original's,
  which is how a rendition is known to be *current*: a newer copy of the
  instance (ingest writes it with a new mtime) makes it stale. A request for
  an instance whose current rendition is already there (redelivery) writes
  nothing and reports ``reused``.
- **unsupported** — never retried: video (served as MP4 from ``/rendered``),
  JPIP (no pixel data in the file), no decoder for the syntax, big endian.
- **retrying** / **failed** — the attempt failed (corrupt data: the codec's
  reason; the file unreadable; the encoder refusing). The request is
  published again at the tail of the queue with ``attempt + 1`` (the queue is
  never blocked by it) until ``max_attempts``; the last failure is *failed*.
- a message that is not a well-formed request is *dead-lettered*; a bus
  failure raises and the batch is *retried later* (renditions written meanwhile
  are then reused).

The codec work runs in a thread, one conversion at a time per process;
several converter processes share the queue's partitions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from io import BytesIO

from pydicom.filereader import dcmread
from pydicom.uid import UID

from dicomcloud.domain.layout import InstanceKey, instance_path, rendition_path
from dicomcloud.domain.messages import (
    CONVERSION_FAILED,
    CONVERSION_QUEUE,
    CONVERSION_RESULT_QUEUE,
    CONVERSION_RETRYING,
    CONVERSION_SUCCESS,
    CONVERSION_UNSUPPORTED,
    ConversionRequested,
    ConversionResult,
    decode,
    encode,
)
from dicomcloud.domain.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomcloud.domain.transfer_syntaxes import EXPLICIT_VR_BIG_ENDIAN, JPEG_LS_LOSSLESS
from dicomcloud.domain.uids import validate_uid
from dicomcloud.domain.viewer_syntaxes import (
    DECODE_AS,
    RENDITION_SYNTAXES,
    lossy_image_compression,
    unsupported_reason,
)
from dicomcloud.errors import DicomCloudError, InvalidInput
from dicomcloud.ports import BlobStore, Bus, Record
from dicomcloud.usecases.index_instances import DeadLetter

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


class Unsupported(Exception):
    """This instance is never converted (not retried)."""


class ConversionFailed(Exception):
    """This attempt failed (retried up to the bound)."""


def _name(syntax: str) -> str:
    return f"{UID(syntax).name} ({syntax})" if UID(syntax).is_transfer_syntax else syntax


def render_rendition(data: bytes, target_syntax: str) -> tuple[bytes, str]:
    """Part 10 bytes of the rendition of the Part 10 file ``data`` in ``target_syntax``,
    and the syntax the file was stored in (CPU-bound: run in a thread).

    Lossless with respect to what was stored: the pixels of the rendition are
    pydicom's decode of the original, exactly; a lossy source is marked
    LossyImageCompression "01" (PS3.3 C.7.6.1.1.5). The SOP Instance UID is kept.
    Raises :class:`Unsupported` or :class:`ConversionFailed` with the reason.
    """
    if target_syntax not in RENDITION_SYNTAXES:
        raise Unsupported(f"the converter does not write {_name(target_syntax)}")
    try:
        ds = dcmread(BytesIO(data))
    except Exception as exc:  # pydicom on a damaged file raises whatever it met
        raise ConversionFailed(f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    source = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if not source:
        raise ConversionFailed("unreadable DICOM: no TransferSyntaxUID in its File Meta Information")
    reason = unsupported_reason(source)
    if reason:
        raise Unsupported(reason)
    if not UID(source).is_transfer_syntax:
        raise Unsupported(f"unknown transfer syntax {source!r}")
    if source == EXPLICIT_VR_BIG_ENDIAN:
        raise Unsupported("Explicit VR Big Endian: pydicom does not re-encode big endian pixel data")
    has_pixels = "PixelData" in ds
    if has_pixels and UID(source).is_encapsulated:
        if source in DECODE_AS:
            ds.file_meta.TransferSyntaxUID = UID(DECODE_AS[source])
        try:
            ds.decompress(generate_instance_uid=False)
        except NotImplementedError as exc:
            raise Unsupported(f"no decoder for {_name(source)}: {exc}") from exc
        except Exception as exc:  # the codec's reason: corrupt or truncated data
            raise ConversionFailed(f"decoding {_name(source)} failed: {exc}") from exc
        marking = lossy_image_compression(source, ds.get("LossyImageCompression"))
        if marking is not None:
            ds.LossyImageCompression = marking
    try:
        if target_syntax == JPEG_LS_LOSSLESS:
            if not has_pixels:
                raise ConversionFailed("no Pixel Data to encode in JPEG-LS")
            ds.compress(UID(JPEG_LS_LOSSLESS), generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = UID(target_syntax)
        ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
    except ConversionFailed:
        raise
    except Exception as exc:  # the encoder refusing these pixels, or the writer this dataset
        raise ConversionFailed(f"encoding {_name(target_syntax)} failed: {exc}") from exc
    return out.getvalue(), source


def _current(blobs: BlobStore, path: str, original_mtime_ns: int) -> int | None:
    """The size of the rendition at ``path`` if it was made from this very original, else None."""
    try:
        st = os.stat(blobs.absolute(path))
    except FileNotFoundError:
        return None
    return st.st_size if st.st_mtime_ns == original_mtime_ns else None


def rendition_for(
    blobs: BlobStore, key: InstanceKey, acceptable: Collection[str] | None = None
) -> tuple[str, str] | None:
    """The current rendition of an instance: (path relative to ROOT, its transfer syntax), or None.

    For WADO-RS: with ``transfer-syntax=*`` from a viewer, serve the rendition
    when there is one; a client asking for the stored syntax gets the original.
    ``acceptable`` limits the answer to those syntaxes (e.g. the viewer list).
    Current means made from the original as it is now (same mtime): after a
    newer copy of the instance arrived, the old rendition is not offered.
    Blocking (a few ``stat`` calls; no file is opened); worth calling only for
    an instance whose stored syntax the viewer cannot decode.
    """
    try:
        original = os.stat(blobs.absolute(instance_path(key))).st_mtime_ns
    except FileNotFoundError:
        return None
    for syntax in RENDITION_SYNTAXES:
        if acceptable is not None and syntax not in acceptable:
            continue
        path = rendition_path(key, syntax)
        if _current(blobs, path, original) is not None:
            return path, syntax
    return None


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: str
    source: str
    error: str = ""
    path: str = ""
    size: int = 0
    reused: bool = False


class Convert:
    def __init__(self, blobs: BlobStore, bus: Bus, *, max_attempts: int = MAX_ATTEMPTS) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._blobs = blobs
        self._bus = bus
        self.max_attempts = max_attempts

    @staticmethod
    def _request(record: Record) -> ConversionRequested:
        message = decode(record.value)
        if not isinstance(message, ConversionRequested):
            raise InvalidInput(f"{type(message).__name__} does not belong on {record.topic}")
        key = InstanceKey(
            message.tenant_id, message.study_instance_uid, message.series_instance_uid, message.sop_instance_uid
        )
        validate_uid(message.source_transfer_syntax_uid, "source TransferSyntaxUID")
        validate_uid(message.target_transfer_syntax_uid, "target TransferSyntaxUID")
        if message.file_path != instance_path(key):
            raise InvalidInput(f"file_path {message.file_path!r} is not the storage path of its instance")
        return message

    async def handle(self, records: list[Record]) -> list[DeadLetter]:
        """Consumer handler for ``conversion_queue``."""
        dead: list[DeadLetter] = []
        out: list[tuple[str, str, bytes]] = []
        for record in records:
            try:
                request = self._request(record)
            except DicomCloudError as exc:
                dead.append(DeadLetter(record, exc.reason))
                continue
            result = await asyncio.to_thread(self.attempt, request)
            out.append((CONVERSION_RESULT_QUEUE, request.study_instance_uid, encode(result)))
            if result.status == CONVERSION_RETRYING:
                again = replace(request, attempt=request.attempt + 1)
                out.append((CONVERSION_QUEUE, request.study_instance_uid, encode(again)))
        if out:
            await self._bus.publish(out)
        return dead

    def attempt(self, request: ConversionRequested) -> ConversionResult:
        """One attempt at one request (blocking: file I/O and codecs)."""
        started = time.monotonic()
        try:
            outcome = self._convert(request)
        except Unsupported as exc:
            outcome = _Outcome(CONVERSION_UNSUPPORTED, request.source_transfer_syntax_uid, str(exc))
        except ConversionFailed as exc:
            final = request.attempt >= self.max_attempts
            outcome = _Outcome(
                CONVERSION_FAILED if final else CONVERSION_RETRYING, request.source_transfer_syntax_uid, str(exc)
            )
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        if outcome.status != CONVERSION_SUCCESS:
            log.warning(
                "conversion of %s to %s, attempt %d/%d: %s: %s", request.sop_instance_uid,
                request.target_transfer_syntax_uid, request.attempt, self.max_attempts, outcome.status, outcome.error,
            )  # fmt: skip
        return ConversionResult(
            tenant_id=request.tenant_id,
            study_instance_uid=request.study_instance_uid,
            series_instance_uid=request.series_instance_uid,
            sop_instance_uid=request.sop_instance_uid,
            source_transfer_syntax_uid=outcome.source,
            target_transfer_syntax_uid=request.target_transfer_syntax_uid,
            status=outcome.status,
            attempt=request.attempt,
            duration_ms=duration_ms,
            finished_at=datetime.now(UTC).isoformat(),
            error=outcome.error,
            rendition_path=outcome.path,
            rendition_size=outcome.size,
            reused=outcome.reused,
        )

    def _convert(self, request: ConversionRequested) -> _Outcome:
        reason = unsupported_reason(request.source_transfer_syntax_uid)
        if reason:
            raise Unsupported(reason)  # nothing to read
        key = InstanceKey(
            request.tenant_id, request.study_instance_uid, request.series_instance_uid, request.sop_instance_uid
        )
        target = rendition_path(key, request.target_transfer_syntax_uid)
        try:
            with open(self._blobs.absolute(request.file_path), "rb") as f:
                # The mtime of the very file read (a newer copy is renamed over it, never written into it).
                mtime_ns = os.fstat(f.fileno()).st_mtime_ns
                size = _current(self._blobs, target, mtime_ns)
                if size is not None:
                    return _Outcome(
                        CONVERSION_SUCCESS, request.source_transfer_syntax_uid, path=target, size=size, reused=True
                    )
                data = f.read()
        except FileNotFoundError as exc:
            raise ConversionFailed(f"the original {request.file_path} is missing") from exc
        except OSError as exc:
            raise ConversionFailed(f"reading the original failed: {exc.strerror or exc}") from exc
        rendered, source = render_rendition(data, request.target_transfer_syntax_uid)
        try:
            written = self._blobs.write_atomic(target, rendered, mtime_ns=mtime_ns)
        except OSError as exc:
            raise ConversionFailed(f"writing the rendition failed: {exc.strerror or exc}") from exc
        return _Outcome(CONVERSION_SUCCESS, source, path=target, size=written)
