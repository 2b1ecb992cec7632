"""Which transfer syntaxes the target viewer decodes, and what a rendition is written in.

The one configurable place of ARCHITECTURE §8: ``Settings.viewer_transfer_syntaxes``
(``DICOMCLOUD_VIEWER_TRANSFER_SYNTAXES``, comma-separated UIDs) defaults to
:data:`DEFAULT_VIEWER_TRANSFER_SYNTAXES`, what Cornerstone3D 5.x decodes as
measured in a browser: every native syntax, RLE, the JPEG processes
.50/.51/.53/.55/.57/.70, JPEG-LS, JPEG 2000 Part 1, HTJ2K, JPEG XL and
Deflated Image Frame Compression. Not in it, hence converted: JPEG 2000 Part 2
(.92/.93), JPIP (.94/.95, and the HTJ2K JPIP .204/.205), the other (retired)
JPEG processes, video, and whole Deflated Explicit VR Little Endian files
(1.2.840.10008.1.2.1.99: Cornerstone's ``wadouri`` loader cannot inflate them).

An instance stored in a syntax outside the list is routed to the converter
(``usecases/index_instances.py``), which writes a rendition in the syntax
:func:`conversion_target` chooses: always lossless with respect to what was
stored (PS3.5 §8: a lossless re-encoding keeps the SOP Instance UID).
Video is not converted (served as MP4 from ``/rendered``); JPIP has no pixel
data in the file to convert: both are recorded as *unsupported*.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicomcloud.domain.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_IMAGE_FRAME_COMPRESSION,
    ENCAPSULATED_UNCOMPRESSED,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_2000_MC,
    JPEG_2000_MC_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    RLE_LOSSLESS,
)
from dicomcloud.domain.uids import is_valid_uid

DEFAULT_VIEWER_TRANSFER_SYNTAXES: tuple[str, ...] = (
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    ENCAPSULATED_UNCOMPRESSED,
    EXPLICIT_VR_BIG_ENDIAN,
    RLE_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    "1.2.840.10008.1.2.4.53",  # retired JPEG processes Cornerstone3D still decodes
    "1.2.840.10008.1.2.4.55",
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    "1.2.840.10008.1.2.4.201",  # HTJ2K
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
    "1.2.840.10008.1.2.4.110",  # JPEG XL
    "1.2.840.10008.1.2.4.111",
    "1.2.840.10008.1.2.4.112",
    DEFLATED_IMAGE_FRAME_COMPRESSION,
)

# What the converter writes, in order of preference among those the viewer decodes.
# JPEG-LS Lossless for encapsulated sources (small, and every frame stays a frame);
# native for native sources (deflated: inflating is enough) and for pixels JPEG-LS
# cannot hold (more than 16 bits, 1-bit, other than 1 or 3 samples).
RENDITION_SYNTAXES: tuple[str, ...] = (JPEG_LS_LOSSLESS, EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
NATIVE_RENDITION_SYNTAXES: tuple[str, ...] = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)

# MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265 (PS3.5 §8.2.5 to §8.2.8), fragmentable variants included.
VIDEO_SYNTAXES = frozenset(
    [f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)] + [f"1.2.840.10008.1.2.4.{n}.1" for n in range(100, 107)]
)
# JPIP Referenced (PS3.5 §8.2.9): the pixel data are a URL, not in the file.
JPIP_SYNTAXES = frozenset(
    ("1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.204", "1.2.840.10008.1.2.4.205")
)
# pydicom 3.0.2 registers no decoder for these syntaxes, but the codecs it drives decode
# their codestreams: what the codestream is comes from its own markers, not from the UID.
# JPEG 2000 Part 2 goes to the Part 1 decoder (openjpeg reads the Part 2 multi-component
# transform markers it knows; a Part 1 codestream is a valid Part 2 one); the retired
# JPEG processes (ISO 10918-1 spectral selection, progressive, arithmetic, hierarchical)
# go to the JPEG decoders of their family (pylibjpeg-libjpeg decodes every process).
_RETIRED_JPEG_LOSSY = (52, 53, 54, 55, 56, 59, 60, 61, 62, 63, 64)
_RETIRED_JPEG_LOSSLESS = (58, 65, 66)
DECODE_AS: dict[str, str] = {
    JPEG_2000_MC_LOSSLESS: JPEG_2000_LOSSLESS,
    JPEG_2000_MC: JPEG_2000,
    **{f"1.2.840.10008.1.2.4.{n}": JPEG_EXTENDED for n in _RETIRED_JPEG_LOSSY},
    **{f"1.2.840.10008.1.2.4.{n}": JPEG_LOSSLESS for n in _RETIRED_JPEG_LOSSLESS},
}

# Always lossy: the lossy JPEG processes (retired ones included) and near-lossless JPEG-LS.
LOSSY_SYNTAXES = frozenset(
    [JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_NEAR_LOSSLESS] + [f"1.2.840.10008.1.2.4.{n}" for n in _RETIRED_JPEG_LOSSY]
)
# Lossy or lossless, as the creator chose: trusted when it says LossyImageCompression "00".
MAYBE_LOSSY_SYNTAXES = frozenset(
    [JPEG_2000, JPEG_2000_MC, "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"]
)


def validate_viewer_syntaxes(syntaxes: Iterable[str]) -> tuple[str, ...]:
    """The list as given, checked: UIDs only, and a native syntax the converter can fall back to."""
    result = tuple(syntaxes)
    bad = [s for s in result if not is_valid_uid(s)]
    if bad:
        raise ValueError(f"viewer transfer syntaxes: {', '.join(map(repr, bad))} not a UID")
    if not any(s in result for s in NATIVE_RENDITION_SYNTAXES):
        raise ValueError(
            "viewer transfer syntaxes must include Explicit VR Little Endian (1.2.840.10008.1.2.1) or "
            "Implicit VR Little Endian (1.2.840.10008.1.2): the converter's fallback"
        )
    return result


def needs_conversion(transfer_syntax_uid: str, viewer_syntaxes: Collection[str]) -> bool:
    return transfer_syntax_uid not in viewer_syntaxes


def unsupported_reason(transfer_syntax_uid: str) -> str | None:
    """Why an instance in this syntax is never converted, or None."""
    if transfer_syntax_uid in VIDEO_SYNTAXES:
        return "unsupported: video (served as MP4 from /rendered), not converted"
    if transfer_syntax_uid in JPIP_SYNTAXES:
        return "unsupported: JPIP referenced pixel data are not in the file"
    return None


@dataclass(frozen=True, slots=True)
class PixelTraits:
    """What the choice of a rendition syntax depends on, from the header (PS3.3 C.7.6.3)."""

    has_pixels: bool
    bits_allocated: int = 0
    samples_per_pixel: int = 1

    @classmethod
    def from_dataset(cls, ds: Dataset) -> PixelTraits:
        """From a header read up to Pixel Data; an image has Rows (PS3.3 C.7.6.3.1)."""
        try:
            bits = int(ds.get("BitsAllocated", 0) or 0)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
        except (TypeError, ValueError):
            return cls(has_pixels=False)
        return cls(has_pixels="Rows" in ds and bits > 0, bits_allocated=bits, samples_per_pixel=samples)

    @property
    def fits_jpeg_ls(self) -> bool:
        """JPEG-LS holds 2 to 16 bit samples, one or three per pixel (PS3.5 §8.2.3)."""
        return self.has_pixels and self.bits_allocated in (8, 16) and self.samples_per_pixel in (1, 3)


def conversion_target(source_syntax: str, traits: PixelTraits, viewer: Collection[str]) -> str:
    """The syntax of the rendition of an instance stored in ``source_syntax``.

    JPEG-LS Lossless for encapsulated pixel data that fit it; otherwise the first
    native syntax the viewer decodes (``validate_viewer_syntaxes`` ensures one).
    """
    native_source = source_syntax in (
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    )
    if not native_source and traits.fits_jpeg_ls and JPEG_LS_LOSSLESS in viewer:
        return JPEG_LS_LOSSLESS
    for syntax in NATIVE_RENDITION_SYNTAXES:
        if syntax in viewer:
            return syntax
    return EXPLICIT_VR_LITTLE_ENDIAN  # a list not validated: the safest guess


def lossy_image_compression(source_syntax: str, stated: str | None) -> str | None:
    """LossyImageCompression (0028,2110) for a rendition of a source in ``source_syntax``.

    "01" when the source was (or may have been, and does not say "00") lossy: the
    rendition re-encodes the decoded pixels losslessly, but they were lossy once
    (PS3.3 C.7.6.1.1.5). None: leave the attribute as it is.
    """
    if source_syntax in LOSSY_SYNTAXES:
        return "01"
    if source_syntax in MAYBE_LOSSY_SYNTAXES and (stated or "").strip() != "00":
        return "01"
    return None
