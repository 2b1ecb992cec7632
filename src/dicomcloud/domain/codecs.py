"""The codecs this installation has, probed once at import (PS3.5 §8.2, Annex A.4).

Decoding: pydicom's decoders — pydicom itself (native, RLE), pylibjpeg-libjpeg
(JPEG), pyjpegls preferred for JPEG-LS (about four times faster than
pylibjpeg), pylibjpeg-openjpeg (JPEG 2000, HTJ2K). Encoding, one
:class:`Target` per producible syntax: RLE (pydicom), JPEG-LS (pyjpegls),
JPEG 2000 (pylibjpeg-openjpeg) and, from imagecodecs, JPEG Baseline 8-bit,
JPEG Lossless SV1 / Process 14 (libjpeg-turbo 3) and HTJ2K (OpenJPH) — each
only if it actually runs here. :class:`PixelDescription` is what a codec
needs to know of the Image Pixel module. Transcoding itself is
:mod:`~dicomcloud.domain.transcode`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder

from dicomcloud.domain.transfer_syntaxes import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    NATIVE_SYNTAXES,
    RLE_LOSSLESS,
)
from dicomcloud.errors import MalformedDicom

imagecodecs: ModuleType | None
try:
    import imagecodecs
except ImportError:  # the codecs extra is not installed
    imagecodecs = None


NATIVE = NATIVE_SYNTAXES
# Lossy settings, chosen for a bounded error rather than a size: JPEG 2000 to a PSNR of
# 60 dB (a 12-bit RMS error of about 4), JPEG Baseline quality 90, JPEG-LS NEAR 2;
# HTJ2K uses OpenJPH's default quantization (about as close).
J2K_LOSSY_PSNR = 60.0
JPEG_QUALITY = 90
JLS_NEAR = 2

COLOR_IN = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"})
MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})


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
        if self.samples_per_pixel == 3 and self.photometric_interpretation in COLOR_IN:
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
class Target:
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


def _targets() -> dict[str, Target]:
    found: dict[str, Target] = {}
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
            found[uid] = Target(uid, encode, low, high, method, signed=signed, min_size=min_size)
    if imagecodecs is not None:
        if imagecodecs.JPEG8.available and _works(_jpeg_lossless):
            found[JPEG_LOSSLESS_SV1] = Target(JPEG_LOSSLESS_SV1, _jpeg_lossless, 2, 16)
            found[JPEG_LOSSLESS] = Target(JPEG_LOSSLESS, _jpeg_lossless, 2, 16)  # SV1 is a Process 14 stream
        if imagecodecs.JPEG8.available:
            found[JPEG_BASELINE] = Target(
                JPEG_BASELINE, _jpeg_baseline, 8, 8, "ISO_10918_1", eight_bit_only=True, signed=False
            )
        if imagecodecs.HTJ2K.available and _works(_htj2k(True, False)):
            found[HTJ2K_LOSSLESS] = Target(HTJ2K_LOSSLESS, _htj2k(True, False), 1, 16)
            found[HTJ2K_LOSSLESS_RPCL] = Target(HTJ2K_LOSSLESS_RPCL, _htj2k(True, True), 1, 16)
            found[HTJ2K] = Target(HTJ2K, _htj2k(False, False), 1, 16, "ISO_15444_15")
    return found


TARGETS = _targets()
# Encoders that exist somewhere but are not installed here: named in the 406 reason.
KNOWN_TARGETS = frozenset(
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


DECODING_PLUGIN = _preferred_decoders()


def decodable(uid: str) -> bool:
    if uid in NATIVE:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def encodable_transfer_syntaxes() -> frozenset[str]:
    """Every syntax this installation can produce (besides sending the stored one)."""
    return frozenset({EXPLICIT_VR_LITTLE_ENDIAN, *TARGETS})


def is_lossy(transfer_syntax_uid: str) -> bool:
    """Whether producing ``transfer_syntax_uid`` here loses information."""
    target = TARGETS.get(transfer_syntax_uid)
    return target is not None and target.lossy_method is not None
