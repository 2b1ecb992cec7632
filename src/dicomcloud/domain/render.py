"""Rendering one frame of an instance into a consumer image (PS3.18 §8.3.5, §8.7.4).

The grayscale pipeline is the one of PS3.4 Annex N.2 up to the Presentation
LUT, with 8-bit output (PS3.18 §8.7.4: no more than 8 bits per channel):

1. **Modality LUT** (PS3.3 C.11.1): the Modality LUT Sequence when present,
   else Rescale Slope / Intercept (defaults 1 and 0).
2. **VOI** (PS3.3 C.11.2): the ``window`` asked for, else the instance's first
   Window Center / Width with its VOI LUT Function, else its VOI LUT
   Sequence, else the full range of the frame's values. The window functions
   are those of PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT) and
   C.11.2.1.3.1 (SIGMOID) with an output range of 0..255, rounded to the
   nearest integer.
3. **MONOCHROME1** is inverted (its minimum is white, PS3.3 C.7.6.3.1.2).

For integer pixels the three steps are evaluated once per stored value that
occurs (a lookup table over ``min..max``) and applied with one gather, which
is exact and fast. Colour (RGB; YBR_* converted to RGB by pydicom's decoders;
PALETTE COLOR through its palette) is scaled to 8 bits; VOI does not apply
to colour (PS3.4 N.2.2). Then the viewport (PS3.18 §8.3.5.1.3): crop, flip
on a negative width or height, scale keeping the aspect ratio to fit; then
encoding as JPEG (baseline, §8.7.4), PNG or GIF with Pillow.

Not supported: the functional groups of enhanced multi-frame images (their
per-frame rescale and window are not read, so such frames get the full-range
window), Presentation LUT Shape and presentation states, overlays, ICC
profiles, burned-in annotation, float pixel data, video.

Decoding takes the bytes of one frame as :mod:`dicomcloud.domain.frames`
returns them (native frames little endian) and the header data set: native
frames are viewed with numpy, compressed ones decoded by pydicom and its
plugins. Everything here is CPU-bound and does no I/O:
callers run it in a worker thread.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomcloud.domain.transfer_syntaxes import NATIVE_SYNTAXES
from dicomcloud.errors import InvalidQuery, NotAcceptable

JPEG = "image/jpeg"
PNG = "image/png"
GIF = "image/gif"
RENDERED_MEDIA_TYPES = (JPEG, PNG, GIF)
DEFAULT_JPEG_QUALITY = 90
# Syntaxes whose frames are native little-endian octets as frames.read_frames returns them.
_NATIVE = NATIVE_SYNTAXES
_PIXEL_MODULE = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
)


class VoiFunction(Enum):
    """VOI LUT Function (0028,1056) values; the ``window`` parameter spells them in lower case
    with a hyphen (PS3.18 §8.3.5.1.4)."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


@dataclass(frozen=True, slots=True)
class Window:
    """Window Center / Width and the function that interprets them (PS3.3 C.11.2.1.2)."""

    center: float
    width: float
    function: VoiFunction = VoiFunction.LINEAR

    def problem(self) -> str | None:
        """Why this window cannot be used, or None (PS3.3 C.11.2.1.2.1, C.11.2.1.3)."""
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            return "window center and width must be finite numbers"
        if self.function is VoiFunction.LINEAR and self.width < 1:
            return f"window width {self.width:g} must be at least 1 for the linear function"
        if self.width <= 0:
            return f"window width {self.width:g} must be greater than 0"
        return None


@dataclass(frozen=True, slots=True)
class Viewport:
    """Output size and source region (PS3.18 §8.3.5.1.3; WADO-URI §9.5.1.2.4-5).

    ``width``/``height`` are the viewport in pixels (None: unconstrained, the
    WADO-URI ``rows``/``columns`` may come alone). The source region is either
    in pixels (``sx``, ``sy``, ``sw``, ``sh``; absolute values, None for the
    defaults; a negative ``sw``/``sh`` flips) or normalized (``region``:
    xmin, ymin, xmax, ymax in 0..1, WADO-URI). ``upscale`` False only ever
    shrinks (thumbnails of small images stay small).
    """

    width: int | None = None
    height: int | None = None
    sx: float | None = None
    sy: float | None = None
    sw: float | None = None
    sh: float | None = None
    region: tuple[float, float, float, float] | None = None
    upscale: bool = True


@dataclass(frozen=True, slots=True)
class RenderOptions:
    media_type: str = JPEG
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int | None = None  # JPEG only (PS3.18 §8.3.5.1.2)


# --- the header ----------------------------------------------------------------------


def _first_number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | bytes) and isinstance(value, Sequence):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def number_of_frames(header: Dataset) -> int:
    value = _first_number(header.get("NumberOfFrames"))
    return max(1, int(value)) if value is not None else 1


def is_image(header: Dataset) -> bool:
    """Whether the header describes pixel data (the Image Pixel Module's size and photometry)."""
    return "Rows" in header and "Columns" in header and "PhotometricInterpretation" in header


def check_image(header: Dataset, media_type: str) -> None:
    """Raise :class:`NotAcceptable` unless ``header`` describes an image we can render."""
    if not is_image(header):
        sop_class = header.get("SOPClassUID", "")
        name = getattr(sop_class, "name", "") or str(sop_class)
        raise NotAcceptable(
            f"the instance is not an image (no Pixel Data; SOP Class {name or 'unknown'}), "
            f"so it has no {media_type} rendering"
        )
    if "FloatPixelData" in header or "DoubleFloatPixelData" in header:
        raise NotAcceptable("float pixel data cannot be rendered")


def instance_window(header: Dataset) -> Window | None:
    """The first Window Center / Width of the instance with its function, if usable."""
    center = _first_number(header.get("WindowCenter"))
    width = _first_number(header.get("WindowWidth"))
    if center is None or width is None:
        return None
    name = str(header.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    try:
        function = VoiFunction(name)
    except ValueError:
        function = VoiFunction.LINEAR  # tolerant when reading: an unknown function reads as linear
    window = Window(center, width, function)
    return None if window.problem() else window


# --- decoding ------------------------------------------------------------------------


def decode_frame(header: Dataset, transfer_syntax_uid: str, frame: bytes | memoryview) -> np.ndarray:
    """The stored values of one frame: (rows, columns) or (rows, columns, samples).

    YBR_FULL / YBR_FULL_422 come back as RGB (pydicom's ``as_rgb``). Raises
    :class:`NotAcceptable` when no installed decoder can decode the frame.
    """
    native = transfer_syntax_uid in _NATIVE
    if native:
        fast = _native_array(header, frame)
        if fast is not None:
            return _fix_bits(fast, header)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if native else UID(transfer_syntax_uid)
    for keyword in _PIXEL_MODULE:
        if keyword in header:
            setattr(ds, keyword, header[keyword].value)
    ds.NumberOfFrames = 1
    ds.PixelData = bytes(frame) if native else encapsulate([bytes(frame)])
    ds["PixelData"].VR = "OB" if not native or header.get("BitsAllocated", 16) <= 8 else "OW"
    try:
        arr = pixel_array(ds)
    except Exception as exc:  # pydicom and its plugins raise many types; translated here
        raise NotAcceptable(
            f"the pixel data ({transfer_syntax_uid}) cannot be decoded for rendering: {type(exc).__name__}: {exc}"
        ) from exc
    return _fix_bits(arr, header)


_NATIVE_DTYPES = {(8, 0): "u1", (8, 1): "i1", (16, 0): "<u2", (16, 1): "<i2", (32, 0): "<u4", (32, 1): "<i4"}


def _native_array(header: Dataset, frame: bytes | memoryview) -> np.ndarray | None:
    """A native little-endian frame viewed as an array without pydicom's decoder machinery,
    for the common cases (8/16/32 bits, grayscale, RGB or palette); else None."""
    photometric = str(header.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR"):
        return None  # e.g. YBR_FULL: pydicom converts it to RGB
    try:
        rows, columns = int(header.Rows), int(header.Columns)
        samples = int(header.get("SamplesPerPixel", 1) or 1)
        dtype = _NATIVE_DTYPES.get((int(header.BitsAllocated), int(header.get("PixelRepresentation", 0) or 0)))
        planar = int(header.get("PlanarConfiguration", 0) or 0)
    except (AttributeError, TypeError, ValueError):
        return None
    count = rows * columns * samples
    if dtype is None or samples not in (1, 3) or len(frame) < count * np.dtype(dtype).itemsize:
        return None
    flat = np.frombuffer(frame, dtype=dtype, count=count)
    if samples == 1:
        return flat.reshape(rows, columns)
    if planar == 1:
        return flat.reshape(samples, rows, columns).transpose(1, 2, 0)
    return flat.reshape(rows, columns, samples)


def _fix_bits(arr: np.ndarray, header: Dataset) -> np.ndarray:
    """Drop bits above Bits Stored (e.g. overlays) and sign-extend signed values."""
    if arr.dtype.kind not in "ui":
        return arr
    bits = arr.dtype.itemsize * 8
    stored = int(header.get("BitsStored", bits) or bits)
    if not 0 < stored < bits:
        return arr
    if arr.dtype.kind == "u":
        masked: np.ndarray = arr & np.array((1 << stored) - 1, dtype=arr.dtype)
        return masked
    shift = bits - stored
    extended: np.ndarray = (arr << shift) >> shift  # an arithmetic shift of a signed type sign-extends
    return extended


# --- grayscale: modality LUT, VOI, polarity --------------------------------------------


def modality_values(stored: np.ndarray, header: Dataset) -> np.ndarray:
    """PS3.3 C.11.1: Modality LUT Sequence, else Rescale Slope and Intercept (float64)."""
    if "ModalityLUTSequence" in header:
        return np.asarray(apply_modality_lut(stored, header), dtype=np.float64)
    slope = _first_number(header.get("RescaleSlope"))
    intercept = _first_number(header.get("RescaleIntercept"))
    values = stored.astype(np.float64)
    if slope is not None and slope != 1.0:
        values *= slope
    if intercept:
        values += intercept
    return values


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 / C.11.2.1.3.1 / C.11.2.1.3.2 with y in 0..255, rounded (uint8)."""
    c, w = window.center, window.width
    x = np.asarray(values, dtype=np.float64)
    if window.function is VoiFunction.LINEAR:
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0 if w > 1 else np.where(x > c - 0.5, 255.0, 0.0)
        y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, 255.0, y))
    elif window.function is VoiFunction.LINEAR_EXACT:
        y = ((x - c) / w + 0.5) * 255.0
        y = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 255.0, y))
    else:
        with np.errstate(over="ignore"):
            y = 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def full_range_window(lowest: float, highest: float) -> Window:
    """The window selecting exactly ``lowest..highest`` (PS3.3 C.11.2.1.2.1 note 4)."""
    return Window((lowest + highest + 1) / 2, max(highest - lowest + 1, 1.0), VoiFunction.LINEAR)


def _voi_lut(values: np.ndarray, header: Dataset) -> np.ndarray | None:
    """The first VOI LUT of the VOI LUT Sequence scaled to 0..255, or None."""
    sequence = header.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    descriptor = item.get("LUTDescriptor")
    if not descriptor or len(descriptor) != 3:
        return None
    # A VOI LUT is indexed by integers (PS3.3 C.11.2.1.1): modality values are rounded.
    out = np.asarray(apply_voi(np.rint(values).astype(np.int64), header, index=0), dtype=np.float64)
    top = float(out.max()) if out.size else 0.0
    depth = int(descriptor[2]) if int(descriptor[2]) in range(8, 17) else max(8, math.ceil(math.log2(top + 1)))
    return np.clip(np.rint(out * 255.0 / ((1 << depth) - 1)), 0, 255).astype(np.uint8)


def _voi(values: np.ndarray, header: Dataset, window: Window | None) -> np.ndarray:
    if window is not None:
        return apply_window(values, window)
    own = instance_window(header)
    if own is not None:
        return apply_window(values, own)
    from_lut = _voi_lut(values, header)
    if from_lut is not None:
        return from_lut
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return apply_window(values, full_range_window(float(values.min()), float(values.max())))


def grayscale_to_8bit(stored: np.ndarray, header: Dataset, window: Window | None) -> np.ndarray:
    """Modality LUT, VOI and MONOCHROME1 inversion of a grayscale frame, as uint8.

    Integer frames go through a table over the stored values that occur
    (``min..max``); other frames are transformed pixel by pixel.
    """
    invert = str(header.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    if stored.dtype.kind in "ui" and stored.dtype.itemsize <= 2 and stored.size:
        lowest, highest = int(stored.min()), int(stored.max())
        table = _voi(modality_values(np.arange(lowest, highest + 1), header), header, window)
        if invert:
            table = 255 - table
        return np.take(table, stored.astype(np.int32) - lowest if lowest else stored)
    out = _voi(modality_values(stored, header), header, window)
    return 255 - out if invert else out


# --- colour ----------------------------------------------------------------------------


def _to_8bit_colour(arr: np.ndarray, header: Dataset) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    bits = int(header.get("BitsStored", arr.dtype.itemsize * 8) or 8)
    if arr.dtype.kind in "ui":
        scaled: np.ndarray = np.asarray(arr, dtype=np.int64) >> max(bits - 8, 0)
    else:
        scaled = np.rint(arr)
    out: np.ndarray = np.clip(scaled, 0, 255).astype(np.uint8)
    return out


def to_display(stored: np.ndarray, header: Dataset, window: Window | None = None) -> np.ndarray:
    """An 8-bit display image of a decoded frame: (rows, columns) gray or (rows, columns, 3) RGB."""
    photometric = str(header.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = np.asarray(apply_color_lut(stored, header))
        return rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)
    if stored.ndim == 3 and stored.shape[-1] in (3, 4):
        return _to_8bit_colour(stored[..., :3], header)
    if stored.ndim == 3 and stored.shape[-1] == 1:
        stored = stored[..., 0]
    if stored.ndim != 2:
        raise NotAcceptable(f"a frame of shape {stored.shape} ({photometric}) cannot be rendered")
    return grayscale_to_8bit(stored, header, window)


# --- geometry: source region and viewport ---------------------------------------------------


def _box(viewport: Viewport, columns: int, rows: int) -> tuple[float, float, float, float, bool, bool]:
    """(left, top, width, height, flip horizontally, flip vertically) of the source region."""
    if viewport.region is not None:
        xmin, ymin, xmax, ymax = viewport.region
        return xmin * columns, ymin * rows, (xmax - xmin) * columns, (ymax - ymin) * rows, False, False
    left = abs(viewport.sx) if viewport.sx is not None else 0.0
    top = abs(viewport.sy) if viewport.sy is not None else 0.0
    width = abs(viewport.sw) if viewport.sw is not None else columns - left
    height = abs(viewport.sh) if viewport.sh is not None else rows - top
    flip_x = viewport.sw is not None and viewport.sw < 0
    flip_y = viewport.sh is not None and viewport.sh < 0
    tolerance = 1e-6
    if width <= 0 or height <= 0 or left + width > columns + tolerance or top + height > rows + tolerance:
        raise InvalidQuery(
            f"viewport source region x={left:g} y={top:g} width={width:g} height={height:g} "
            f"is not inside the {columns}x{rows} image"
        )
    return left, top, width, height, flip_x, flip_y


def output_size(viewport: Viewport, width: float, height: float) -> tuple[int, int]:
    """The size a ``width`` x ``height`` region gets scaled to: as large as fits, aspect kept."""
    scales = []
    if viewport.width is not None:
        scales.append(viewport.width / width)
    if viewport.height is not None:
        scales.append(viewport.height / height)
    if not scales:
        return max(1, round(width)), max(1, round(height))
    scale = min(scales)
    if not viewport.upscale:
        scale = min(scale, 1.0)
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    if viewport.width is not None:
        out_w = min(out_w, viewport.width)
    if viewport.height is not None:
        out_h = min(out_h, viewport.height)
    return out_w, out_h


def fit(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    """Crop to the source region, flip, and scale into the viewport (PS3.18 §8.3.5.1.3)."""
    if viewport is None:
        return image
    left, top, width, height, flip_x, flip_y = _box(viewport, image.width, image.height)
    size = output_size(viewport, width, height)
    whole = (left, top, width, height) == (0, 0, image.width, image.height)
    if size != (image.width, image.height) or not whole:
        shrinking = size[0] < width or size[1] < height
        resample = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
        image = image.resize(size, resample, box=(left, top, left + width, top + height))
    if flip_x:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if flip_y:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image


# --- encoding --------------------------------------------------------------------------------


def to_image(display: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(display), mode="L" if display.ndim == 2 else "RGB")


def encode(image: Image.Image, media_type: str, quality: int | None = None) -> bytes:
    """JPEG (baseline, PS3.18 §8.7.4), PNG or GIF bytes of an 8-bit image."""
    out = io.BytesIO()
    if media_type == JPEG:
        image.save(out, "JPEG", quality=quality or DEFAULT_JPEG_QUALITY, progressive=False, optimize=False)
    elif media_type == PNG:
        image.save(out, "PNG", compress_level=3)
    elif media_type == GIF:
        image.save(out, "GIF")
    else:
        raise NotAcceptable(f"{media_type} is not a rendered media type we produce")
    return out.getvalue()


def encode_animation(images: Sequence[Image.Image], frame_time_ms: float | None) -> bytes:
    """An animated GIF (PS3.18 Table 8.7.4-1: image/gif for multi-frame images), looping."""
    out = io.BytesIO()
    duration = max(20, round(frame_time_ms)) if frame_time_ms and frame_time_ms > 0 else 100
    first, *rest = images
    first.save(out, "GIF", save_all=True, append_images=rest, duration=duration, loop=0)
    return out.getvalue()


def frame_time(header: Dataset) -> float | None:
    """Frame Time (0018,1063) in ms, for the pace of an animation."""
    return _first_number(header.get("FrameTime"))


def render(header: Dataset, transfer_syntax_uid: str, frame: bytes | memoryview, options: RenderOptions) -> bytes:
    """One frame in ``options.media_type``: decode, display values, viewport, encode."""
    return encode(render_image(header, transfer_syntax_uid, frame, options), options.media_type, options.quality)


def render_image(
    header: Dataset, transfer_syntax_uid: str, frame: bytes | memoryview, options: RenderOptions
) -> Image.Image:
    """One frame as a Pillow image, viewport applied (not yet encoded)."""
    check_image(header, options.media_type)
    stored = decode_frame(header, transfer_syntax_uid, frame)
    return fit(to_image(to_display(stored, header, options.window)), options.viewport)
