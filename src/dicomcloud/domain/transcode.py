"""Transcoding on request: Pixel Data from one Transfer Syntax to another.

PS3.18 §8.7.3 lets a WADO-RS client name the Transfer Syntax it accepts;
what the installed codecs can produce is decided here, once, at import:

* decoding (any stored syntax to pixels): pydicom's decoders, i.e. pydicom
  itself (native, RLE), pylibjpeg-libjpeg (JPEG baseline / extended /
  lossless), pyjpegls or pylibjpeg (JPEG-LS), pylibjpeg-openjpeg (JPEG 2000,
  HTJ2K);
* encoding: Explicit VR Little Endian (numpy), RLE Lossless (pydicom),
  JPEG-LS Lossless / Near-Lossless (pyjpegls), JPEG 2000 Lossless / lossy
  (pylibjpeg-openjpeg), and from imagecodecs: JPEG Baseline 8-bit and JPEG
  Lossless SV1 / Process 14 (libjpeg-turbo 3) and HTJ2K (OpenJPH).

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import UID

from dicomcloud.domain.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    RLE_LOSSLESS,
)
from dicomcloud.errors import DicomCloudError, MalformedDicom, NotAcceptable

imagecodecs: ModuleType | None
try:
    import imagecodecs
except ImportError:  # the codecs extra is not installed
    imagecodecs = None


NATIVE = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN}
)
# Decodable syntaxes whose Pixel Data is always lossy (JPEG 2000 and HTJ2K may be either;
# video, lossy too, is not decoded here).
LOSSY_SOURCES = frozenset({JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_NEAR_LOSSLESS})
MAX_NATIVE_LENGTH = 2**32 - 2  # PS3.5 §7.1.1: the largest even 32-bit value length

# Lossy settings, chosen for a bounded error rather than a size: JPEG 2000 to a PSNR of
# 60 dB (a 12-bit RMS error of about 4), JPEG Baseline quality 90, JPEG-LS NEAR 2;
# HTJ2K uses OpenJPH's default quantization (about as close).
J2K_LOSSY_PSNR = 60.0
JPEG_QUALITY = 90
JLS_NEAR = 2

_COLOR_IN = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"})
_MONO = frozenset({"MONOCHROME1", "MONOCHROME2"})


def name_of(transfer_syntax_uid: str) -> str:
    """``Name (uid)`` for messages, e.g. ``JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)``."""
    name = UID(transfer_syntax_uid).name
    return transfer_syntax_uid if name == transfer_syntax_uid else f"{name} ({transfer_syntax_uid})"


@dataclass(frozen=True, slots=True)
class PixelDescription:
    """The Image Pixel module attributes (PS3.3 C.7.6.3) a codec needs."""

    rows: int
    columns: int
    samples_per_pixel: int = 1
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    photometric_interpretation: str = "MONOCHROME2"
    planar_configuration: int = 0
    number_of_frames: int = 1

    @classmethod
    def from_dataset(cls, ds: Any) -> PixelDescription | None:
        """From a data set (a header read up to Pixel Data is enough); None without Rows/Columns."""
        if ds.get("Rows") in (None, "") or ds.get("Columns") in (None, ""):
            return None

        def number(keyword: str, default: int) -> int:
            value = ds.get(keyword)
            try:
                return default if value in (None, "") else int(value)
            except (TypeError, ValueError) as exc:
                raise MalformedDicom(f"{keyword} {value!r} is not an integer") from exc

        bits_allocated = number("BitsAllocated", 16)
        return cls(
            rows=number("Rows", 0),
            columns=number("Columns", 0),
            samples_per_pixel=number("SamplesPerPixel", 1),
            bits_allocated=bits_allocated,
            bits_stored=number("BitsStored", bits_allocated),
            pixel_representation=number("PixelRepresentation", 0),
            photometric_interpretation=str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper(),
            planar_configuration=number("PlanarConfiguration", 0),
            number_of_frames=max(number("NumberOfFrames", 1), 1),
        )

    @property
    def native_frame_length(self) -> int:
        """Bytes of one frame in a native encoding (bits, for BitsAllocated 1, rounded up)."""
        return (self.rows * self.columns * self.samples_per_pixel * self.bits_allocated + 7) // 8

    def decoded(self) -> PixelDescription:
        """What decoding gives: color as RGB, planes interleaved (PlanarConfiguration 0)."""
        if self.samples_per_pixel == 3 and self.photometric_interpretation in _COLOR_IN:
            return replace(self, photometric_interpretation="RGB", planar_configuration=0)
        return replace(self, planar_configuration=0)

    def options(self) -> dict[str, Any]:
        """pydicom's keyword names for one frame of these pixels."""
        return {
            "rows": self.rows,
            "columns": self.columns,
            "samples_per_pixel": self.samples_per_pixel,
            "bits_allocated": self.bits_allocated,
            "bits_stored": self.bits_stored,
            "pixel_representation": self.pixel_representation,
            "photometric_interpretation": self.photometric_interpretation,
            "planar_configuration": self.planar_configuration,
            "number_of_frames": 1,
            "pixel_keyword": "PixelData",
        }


# --- encoders ---------------------------------------------------------------------------

Encode = Callable[[np.ndarray, PixelDescription], tuple[bytes, str]]
"""(one decoded frame, its description) -> (codestream, PhotometricInterpretation of the result)."""


@dataclass(frozen=True, slots=True)
class _Target:
    uid: str
    encode: Encode
    min_bits: int  # BitsStored range
    max_bits: int
    lossy_method: str | None = None  # LossyImageCompressionMethod (PS3.3 C.7.6.1.1.5.1) when lossy
    eight_bit_only: bool = False
    signed: bool = True
    min_size: int = 1  # Rows and Columns at least this


# pylibjpeg-openjpeg encodes with six resolution levels: smaller images fail
# (found by tests/e2e/test_fuzz.py with 8 x 8 images: a stream cut mid-body)
_OPENJPEG_MIN_SIZE = 32


def _pydicom_encoder(uid: str, **options: Any) -> Encode | None:
    encoder = get_encoder(uid)
    if not encoder.is_available:
        return None

    def encode(frame: np.ndarray, px: PixelDescription) -> tuple[bytes, str]:
        opts = {k: v for k, v in px.options().items() if k != "pixel_keyword"}
        return bytes(encoder.encode(frame, **opts, **options)), px.photometric_interpretation

    return encode


def _unsigned(frame: np.ndarray, px: PixelDescription) -> np.ndarray:
    """Two's complement samples as the unsigned BitsStored-bit patterns JPEG codes (PS3.5 §8.2.1)."""
    if frame.dtype.kind != "i":
        return frame
    unsigned = frame.view(frame.dtype.str.replace("i", "u"))
    masked: np.ndarray = unsigned & np.array((1 << px.bits_stored) - 1, dtype=unsigned.dtype)
    return masked


def _jpeg_lossless(frame: np.ndarray, px: PixelDescription) -> tuple[bytes, str]:
    assert imagecodecs is not None
    data = _unsigned(frame, px)
    if px.bits_stored <= 8 and data.dtype.itemsize > 1:
        data = data.astype(np.uint8)
    space = "RGB" if px.samples_per_pixel == 3 else None  # no color transform in a lossless stream
    encoded = imagecodecs.jpeg8_encode(
        data, lossless=True, predictor=1, bitspersample=px.bits_stored, colorspace=space, outcolorspace=space
    )
    return bytes(encoded), px.photometric_interpretation


def _jpeg_baseline(frame: np.ndarray, px: PixelDescription) -> tuple[bytes, str]:
    assert imagecodecs is not None
    if px.samples_per_pixel == 3:
        encoded = imagecodecs.jpeg8_encode(frame, level=JPEG_QUALITY, subsampling="422")
        return bytes(encoded), "YBR_FULL_422"
    return bytes(imagecodecs.jpeg8_encode(frame, level=JPEG_QUALITY)), px.photometric_interpretation


def _htj2k(lossless: bool, rpcl: bool) -> Encode:
    """OpenJPH always codes RPCL progression; no color transform, so RGB stays RGB. HTJ2K
    Lossless RPCL also wants TLM markers and a base resolution of at most 64 (PS3.5 §10.18)."""

    def encode(frame: np.ndarray, px: PixelDescription) -> tuple[bytes, str]:
        assert imagecodecs is not None
        decompositions = None
        if rpcl:
            decompositions = max(5, (max(px.rows, px.columns) - 1).bit_length() - 6)
        encoded = imagecodecs.htj2k_encode(
            frame, reversible=lossless, rgb=False, tlm=rpcl or None, resolutions=decompositions
        )
        return bytes(encoded), px.photometric_interpretation

    return encode


def _works(encode: Encode) -> bool:
    """Whether an imagecodecs encoder runs here (e.g. lossless JPEG needs libjpeg-turbo 3)."""
    probe = np.arange(64, dtype=np.uint16).reshape(8, 8)
    try:
        encode(probe, PixelDescription(8, 8, bits_stored=12))
    except Exception:  # any failure means: not usable
        return False
    return True


def _targets() -> dict[str, _Target]:
    found: dict[str, _Target] = {}
    pydicom_targets: list[tuple[str, dict[str, Any], int, int, str | None]] = [
        (RLE_LOSSLESS, {}, 1, 16, None),
        (JPEG_LS_LOSSLESS, {}, 2, 16, None),
        (JPEG_LS_NEAR_LOSSLESS, {"jls_error": JLS_NEAR}, 2, 16, "ISO_14495_1"),
        (JPEG_2000_LOSSLESS, {}, 1, 16, None),
        (JPEG_2000, {"signal_noise_ratios": [J2K_LOSSY_PSNR]}, 1, 16, "ISO_15444_1"),
    ]
    for uid, options, low, high, method in pydicom_targets:
        encode = _pydicom_encoder(uid, **options)
        if encode is not None:
            signed = uid != JPEG_LS_NEAR_LOSSLESS  # NEAR may flip signs at the range ends
            min_size = _OPENJPEG_MIN_SIZE if uid in (JPEG_2000_LOSSLESS, JPEG_2000) else 1
            found[uid] = _Target(uid, encode, low, high, method, signed=signed, min_size=min_size)
    if imagecodecs is not None:
        if imagecodecs.JPEG8.available and _works(_jpeg_lossless):
            found[JPEG_LOSSLESS_SV1] = _Target(JPEG_LOSSLESS_SV1, _jpeg_lossless, 2, 16)
            found[JPEG_LOSSLESS] = _Target(JPEG_LOSSLESS, _jpeg_lossless, 2, 16)  # SV1 is a Process 14 stream
        if imagecodecs.JPEG8.available:
            found[JPEG_BASELINE] = _Target(
                JPEG_BASELINE, _jpeg_baseline, 8, 8, "ISO_10918_1", eight_bit_only=True, signed=False
            )
        if imagecodecs.HTJ2K.available and _works(_htj2k(True, False)):
            found[HTJ2K_LOSSLESS] = _Target(HTJ2K_LOSSLESS, _htj2k(True, False), 1, 16)
            found[HTJ2K_LOSSLESS_RPCL] = _Target(HTJ2K_LOSSLESS_RPCL, _htj2k(True, True), 1, 16)
            found[HTJ2K] = _Target(HTJ2K, _htj2k(False, False), 1, 16, "ISO_15444_15")
    return found


_TARGETS = _targets()
# Encoders that exist somewhere but are not installed here: named in the 406 reason.
_KNOWN_TARGETS = frozenset(
    {
        RLE_LOSSLESS,
        JPEG_LS_LOSSLESS,
        JPEG_LS_NEAR_LOSSLESS,
        JPEG_2000_LOSSLESS,
        JPEG_2000,
        JPEG_BASELINE,
        JPEG_LOSSLESS,
        JPEG_LOSSLESS_SV1,
        HTJ2K_LOSSLESS,
        HTJ2K_LOSSLESS_RPCL,
        HTJ2K,
    }
)


def _preferred_decoders() -> dict[str, str]:
    """pyjpegls (CharLS) decodes JPEG-LS about four times faster than pylibjpeg-libjpeg."""
    preferred = {}
    for uid in (JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS):
        if "pyjpegls" in get_decoder(uid).available_plugins:
            preferred[uid] = "pyjpegls"
    return preferred


_DECODING_PLUGIN = _preferred_decoders()


def _decodable(uid: str) -> bool:
    if uid in NATIVE:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def encodable_transfer_syntaxes() -> frozenset[str]:
    """Every syntax this installation can produce (besides sending the stored one)."""
    return frozenset({EXPLICIT_VR_LITTLE_ENDIAN, *_TARGETS})


def is_lossy(transfer_syntax_uid: str) -> bool:
    """Whether producing ``transfer_syntax_uid`` here loses information."""
    target = _TARGETS.get(transfer_syntax_uid)
    return target is not None and target.lossy_method is not None


# --- what is possible -------------------------------------------------------------------


def _target_refusal(target: _Target, px: PixelDescription) -> str | None:
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
        if photometric not in _MONO and photometric != "PALETTE COLOR":
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
    if target_ts != EXPLICIT_VR_LITTLE_ENDIAN and target_ts not in _TARGETS:
        if target_ts in _KNOWN_TARGETS:
            return f"no encoder for {name_of(target_ts)} is installed"
        return f"transcoding to {name_of(target_ts)} is not supported"
    if pixels is None:
        return None
    if not _decodable(source_ts):
        return f"no decoder for {name_of(source_ts)} is installed"
    if target_ts == EXPLICIT_VR_LITTLE_ENDIAN:
        size = pixels.native_frame_length * pixels.number_of_frames
        if size > MAX_NATIVE_LENGTH:
            return f"the decoded Pixel Data ({size} bytes) is too long for Explicit VR Little Endian"
        return None
    return _target_refusal(_TARGETS[target_ts], pixels)


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
            "decoding_plugin": _DECODING_PLUGIN.get(source, ""),
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
    target = _TARGETS.get(target_ts)
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
        for array, _meta in decoder.iter_array(ds, as_rgb=True, decoding_plugin=_DECODING_PLUGIN.get(source_ts, "")):
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
    target = _TARGETS.get(target_ts)
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
