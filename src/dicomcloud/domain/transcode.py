"""Transcoding on request: Pixel Data from one Transfer Syntax to another.

PS3.18 §8.7.3 lets a WADO-RS client name the Transfer Syntax it accepts;
what can be produced from what is decided here;

the decoders and encoders are those :mod:`~dicomcloud.domain.codecs` found
installed; Explicit VR Little Endian is written with numpy.

Encoded streams follow PS3.5 §8.2 and Annex A.4 (one frame per fragment,
a Basic Offset Table, or an Extended Offset Table past 4 GiB). A lossy
result gets LossyImageCompression "01" and one more value of
LossyImageCompressionRatio and LossyImageCompressionMethod (PS3.3
C.7.6.1.1.5); the SOP Instance UID is kept, since the client asked for
this instance in another encoding. Color is decoded to RGB (YBR_FULL_422
JPEG, YBR_RCT / YBR_ICT JPEG 2000 included) and written as RGB, except
JPEG Baseline, which is YBR_FULL_422. A data set without Pixel Data is
encoded alike (Explicit VR Little Endian) under every syntax offered, so
it only gets the new Transfer Syntax UID.

Everything here is CPU-bound: callers run it in worker threads. Pixel data
that cannot be decoded raises :class:`MalformedDicom`; an encoder that
fails raises :class:`DicomCloudError` (500), both with the reason.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from dicomcloud.domain.codecs import (
    DECODING_PLUGIN,
    KNOWN_TARGETS,
    MONOCHROME,
    NATIVE,
    TARGETS,
    PixelDescription,
    Target,
    decodable,
)
from dicomcloud.domain.transfer_syntaxes import (
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LS_NEAR_LOSSLESS,
)
from dicomcloud.errors import DicomCloudError, MalformedDicom, NotAcceptable

# Decodable syntaxes whose Pixel Data is always lossy (JPEG 2000 and HTJ2K may be either;
# video, lossy too, is not decoded here).
LOSSY_SOURCES = frozenset({JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_NEAR_LOSSLESS})
MAX_NATIVE_LENGTH = 2**32 - 2  # PS3.5 §7.1.1: the largest even 32-bit value length

def name_of(transfer_syntax_uid: str) -> str:
    """``Name (uid)`` for messages, e.g. ``JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)``."""
    name = UID(transfer_syntax_uid).name
    return transfer_syntax_uid if name == transfer_syntax_uid else f"{name} ({transfer_syntax_uid})"


# --- what is possible -------------------------------------------------------------------


def _target_refusal(target: Target, px: PixelDescription) -> str | None:
    name = name_of(target.uid)
    if px.bits_allocated not in (8, 16):
        return f"{name} is produced here from BitsAllocated 8 or 16 only, not {px.bits_allocated}"
    if target.eight_bit_only and (px.bits_allocated != 8 or px.bits_stored != 8):
        return f"{name} holds 8-bit samples only; this instance has BitsStored {px.bits_stored}"
    if not target.min_bits <= px.bits_stored <= min(target.max_bits, px.bits_allocated):
        return f"{name} cannot hold BitsStored {px.bits_stored} (from {target.min_bits} to {target.max_bits})"
    if px.pixel_representation == 1 and not target.signed:
        return f"{name} is not produced here for signed pixels (PixelRepresentation 1)"
    photometric = px.decoded().photometric_interpretation
    if px.samples_per_pixel == 1:
        if photometric == "PALETTE COLOR" and target.lossy_method:
            return f"{name} is lossy and would change PALETTE COLOR indices"
        if photometric not in MONOCHROME and photometric != "PALETTE COLOR":
            return f"{name} is not produced here for PhotometricInterpretation {photometric}"
    elif px.samples_per_pixel == 3:
        if photometric != "RGB":
            return f"{name} is not produced here for PhotometricInterpretation {px.photometric_interpretation}"
        if px.pixel_representation == 1:
            return f"{name} is not produced here for signed color pixels"
    else:
        return f"{name} is not produced here for SamplesPerPixel {px.samples_per_pixel}"
    if min(px.rows, px.columns) < target.min_size:
        return f"{name} is produced here for images of at least {target.min_size} x {target.min_size} pixels"
    return None


def can_transcode(source_ts: str, target_ts: str, pixels: PixelDescription | None) -> str | None:
    """None when an instance (or its frames) in ``source_ts`` can be sent in ``target_ts``;
    otherwise the reason, for a 406 (PS3.18 §8.7.3.5.2, §8.7.8.2).

    ``pixels`` describes its Pixel Data; None when it has none (an SR, a KO...),
    which can be sent in any syntax offered here.
    """
    if source_ts == target_ts:
        return None
    if target_ts in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN):
        return f"{name_of(target_ts)} shall not be used with DICOM web services (PS3.18 §8.7.3)"
    if target_ts != EXPLICIT_VR_LITTLE_ENDIAN and target_ts not in TARGETS:
        if target_ts in KNOWN_TARGETS:
            return f"no encoder for {name_of(target_ts)} is installed"
        return f"transcoding to {name_of(target_ts)} is not supported"
    if pixels is None:
        return None
    if not decodable(source_ts):
        return f"no decoder for {name_of(source_ts)} is installed"
    if target_ts == EXPLICIT_VR_LITTLE_ENDIAN:
        size = pixels.native_frame_length * pixels.number_of_frames
        if size > MAX_NATIVE_LENGTH:
            return f"the decoded Pixel Data ({size} bytes) is too long for Explicit VR Little Endian"
        return None
    return _target_refusal(TARGETS[target_ts], pixels)


# --- frames -----------------------------------------------------------------------------


def decode_frame(frame: bytes | memoryview, pixels: PixelDescription, source_ts: str) -> np.ndarray:
    """One frame as pixels, shaped (rows, columns[, samples]); color as RGB.

    Native frames (``source_ts`` native) are Little Endian octets as WADO-RS
    serves them (PS3.18 §8.7.3.3.1); encapsulated ones a codestream.
    """
    source = EXPLICIT_VR_LITTLE_ENDIAN if source_ts in NATIVE else source_ts
    buffer = bytes(frame) if source in NATIVE else encapsulate([bytes(frame)])
    try:
        options: dict[str, Any] = {
            **pixels.options(),
            "as_rgb": True,
            "decoding_plugin": DECODING_PLUGIN.get(source, ""),
        }
        array, _meta = get_decoder(source).as_array(buffer, **options)
    except Exception as exc:
        raise MalformedDicom(f"a frame cannot be decoded as {name_of(source_ts)}: {exc}") from exc
    return _native_order(array)


def _native_order(array: Any) -> np.ndarray:
    """Decoders may hand out big-endian arrays (Explicit VR Big Endian) or strided views
    (RLE color planes); codecs want contiguous samples in native byte order."""
    result = np.ascontiguousarray(array)
    if not result.dtype.isnative:
        result = result.astype(result.dtype.newbyteorder("="))
    return result


def _container(frame: np.ndarray, bits_allocated: int) -> np.ndarray:
    """``frame`` in a little-endian integer type of BitsAllocated bits."""
    kind = "i" if frame.dtype.kind == "i" else "u"
    return frame.astype(f"<{kind}{max(bits_allocated, 8) // 8}", copy=False)


def encode_frame(frame: np.ndarray, pixels: PixelDescription, target_ts: str) -> tuple[bytes, str]:
    """(bytes of ``frame`` in ``target_ts``, PhotometricInterpretation they have).

    ``pixels`` describes ``frame`` as :func:`decode_frame` gives it
    (``PixelDescription.decoded()``). Explicit VR Little Endian gives native
    Little Endian octets (BitsAllocated 1: packed, LSB first).
    """
    if target_ts == EXPLICIT_VR_LITTLE_ENDIAN:
        if pixels.bits_allocated == 1:
            return np.packbits(frame.astype(np.uint8).ravel(), bitorder="little").tobytes(), (
                pixels.photometric_interpretation
            )
        return _container(frame, pixels.bits_allocated).tobytes(), pixels.photometric_interpretation
    target = TARGETS.get(target_ts)
    if target is None:
        raise NotAcceptable(can_transcode(EXPLICIT_VR_LITTLE_ENDIAN, target_ts, pixels) or name_of(target_ts))
    try:
        return target.encode(frame, pixels)
    except Exception as exc:
        raise DicomCloudError(f"encoding a frame as {name_of(target_ts)} failed: {exc}") from exc


def transcode_frames(
    frames: Iterable[bytes | memoryview], pixels: PixelDescription, source_ts: str, target_ts: str
) -> list[bytes]:
    """Frames of ``source_ts`` (as WADO-RS serves them) re-encoded in ``target_ts``."""
    reason = can_transcode(source_ts, target_ts, pixels)
    if reason:
        raise NotAcceptable(reason)
    if source_ts == target_ts:
        return [bytes(f) for f in frames]
    decoded = pixels.decoded()
    return [encode_frame(decode_frame(f, pixels, source_ts), decoded, target_ts)[0] for f in frames]


# --- instances --------------------------------------------------------------------------


def _read(data: bytes) -> Dataset:
    try:
        ds = dcmread(io.BytesIO(data))
    except Exception as exc:
        raise MalformedDicom(f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    if not str(ds.file_meta.get("TransferSyntaxUID", "") or "").strip():
        raise MalformedDicom("file meta information has no TransferSyntaxUID (0002,0010)")
    return ds


def _iter_frames(ds: Dataset, source_ts: str) -> Iterable[np.ndarray]:
    try:
        decoder = get_decoder(source_ts)
        for array, _meta in decoder.iter_array(ds, as_rgb=True, decoding_plugin=DECODING_PLUGIN.get(source_ts, "")):
            yield _native_order(array)
    except DicomCloudError:
        raise
    except Exception as exc:
        raise MalformedDicom(f"the Pixel Data cannot be decoded as {name_of(source_ts)}: {exc}") from exc


_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _swap_words(ds: Dataset) -> None:
    """Explicit VR Big Endian other-word values to Little Endian (PS3.5 §7.3); Pixel Data aside."""
    for element in ds.iterall():
        size = _WORD_SIZES.get(str(element.VR))
        if size and element.tag != 0x7FE00010 and isinstance(element.value, bytes) and element.value:
            value = element.value[: len(element.value) // size * size]
            element.value = np.frombuffer(value, f">u{size}").astype(f"<u{size}").tobytes()


def _set_native(ds: Dataset, frames: Sequence[bytes], bits_allocated: int) -> None:
    data = b"".join(frames)
    if len(data) % 2:
        data += b"\x00"
    ds.PixelData = data
    element = ds["PixelData"]
    element.VR = "OB" if bits_allocated <= 8 else "OW"
    element.is_undefined_length = False


def _set_encapsulated(ds: Dataset, frames: Sequence[bytes]) -> None:
    if sum(len(f) + 8 for f in frames) > 2**32 - 2:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(list(frames))
    else:
        ds.PixelData = encapsulate(list(frames))
    element = ds["PixelData"]
    element.VR = "OB"
    element.is_undefined_length = True


def _mark_lossy(ds: Dataset, method: str, ratio: float) -> None:
    """PS3.3 C.7.6.1.1.5: "01", and one more ratio and method value, in step."""

    def values(keyword: str) -> list[str]:
        value = ds.get(keyword)
        if value is None or value == "":
            return []
        return [str(v) for v in value] if isinstance(value, Sequence) and not isinstance(value, str) else [str(value)]

    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*values("LossyImageCompressionRatio"), f"{ratio:.2f}"[:16]]
    ds.LossyImageCompressionMethod = [*values("LossyImageCompressionMethod"), method]


def _recode_pixels(ds: Dataset, pixels: PixelDescription, source_ts: str, target_ts: str) -> None:
    decoded = pixels.decoded()
    encoded: list[bytes] = []
    photometric = decoded.photometric_interpretation
    if target_ts == EXPLICIT_VR_LITTLE_ENDIAN and pixels.bits_allocated == 1:
        # 1-bit frames are packed back to back, across byte boundaries (PS3.5 §8.1.1)
        bits = [frame.astype(np.uint8).ravel() for frame in _iter_frames(ds, source_ts)]
        encoded = [np.packbits(np.concatenate(bits), bitorder="little").tobytes()] if bits else []
    else:
        for frame in _iter_frames(ds, source_ts):
            data, photometric = encode_frame(frame, decoded, target_ts)
            encoded.append(data)
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    if target_ts == EXPLICIT_VR_LITTLE_ENDIAN:
        _set_native(ds, encoded, pixels.bits_allocated)
    else:
        _set_encapsulated(ds, encoded)
    if source_ts in LOSSY_SOURCES:
        ds.LossyImageCompression = "01"
    target = TARGETS.get(target_ts)
    if target is not None and target.lossy_method is not None:
        native = pixels.native_frame_length * len(encoded)
        _mark_lossy(ds, target.lossy_method, native / max(sum(len(e) for e in encoded), 1))
    if ds.get("PhotometricInterpretation") != photometric:
        ds.PhotometricInterpretation = photometric
    if pixels.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0


def transcode_instance(data: bytes, target_ts: str) -> bytes:
    """The Part 10 file ``data`` re-encoded in ``target_ts`` (PS3.10; PS3.5 §10 and Annex A).

    Every element is kept; the file meta TransferSyntaxUID names
    ``target_ts``; Pixel Data is decoded and re-encoded frame by frame.
    Raises :class:`NotAcceptable` when :func:`can_transcode` refuses,
    :class:`MalformedDicom` when the stored data cannot be read or decoded.
    """
    ds = _read(data)
    source_ts = str(ds.file_meta.TransferSyntaxUID).strip()
    if source_ts == target_ts:
        return data
    has_pixels = "PixelData" in ds
    pixels = PixelDescription.from_dataset(ds) if has_pixels else None
    if has_pixels and pixels is None:
        raise MalformedDicom("the instance has Pixel Data but no Rows and Columns")
    reason = can_transcode(source_ts, target_ts, pixels)
    if reason:
        raise NotAcceptable(reason)
    if source_ts == EXPLICIT_VR_BIG_ENDIAN:
        _swap_words(ds)
    if pixels is not None:
        keep_bytes = target_ts == EXPLICIT_VR_LITTLE_ENDIAN and source_ts in NATIVE - {EXPLICIT_VR_BIG_ENDIAN}
        if not keep_bytes:
            _recode_pixels(ds, pixels, source_ts, target_ts)
    ds.file_meta.TransferSyntaxUID = UID(target_ts)
    out = io.BytesIO()
    try:
        dcmwrite(out, ds, enforce_file_format=True)
    except Exception as exc:
        raise DicomCloudError(f"the instance cannot be written in {name_of(target_ts)}: {exc}") from exc
    return out.getvalue()
