"""Rendering (domain/render.py, domain/render_query.py) and the WADO-URI query parser.

Expected values are computed here, pixel by pixel in plain Python, from the
formulas of PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT) and
C.11.2.1.3.1 (SIGMOID) with an output range of 0..255, and from pydicom's
reading of the factory's instances.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from dicomcloud.domain import frames as frames_mod
from dicomcloud.domain import render
from dicomcloud.domain.render import Viewport, VoiFunction, Window
from dicomcloud.domain.render_query import (
    choose_rendered_media,
    parse_rendered_query,
    parse_thumbnail_query,
    parse_viewport,
    parse_window,
)
from dicomcloud.entrypoints.http.wado_uri import APPLICATION_DICOM, parse_uri_request
from dicomcloud.errors import InvalidInput, InvalidQuery, NotAcceptable
from tests import factory

# --- the standard's formulas, one value at a time -------------------------------------------


def linear(x: float, c: float, w: float) -> int:
    """PS3.3 C.11.2.1.2.1, ymin 0, ymax 255."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0
    if x > c - 0.5 + (w - 1) / 2:
        return 255
    return round(((x - (c - 0.5)) / (w - 1) + 0.5) * 255)


def linear_exact(x: float, c: float, w: float) -> int:
    """PS3.3 C.11.2.1.3.2."""
    if x <= c - w / 2:
        return 0
    if x > c + w / 2:
        return 255
    return round(((x - c) / w + 0.5) * 255)


def sigmoid(x: float, c: float, w: float) -> int:
    """PS3.3 C.11.2.1.3.1."""
    exponent = -4 * (x - c) / w
    return 0 if exponent > 700 else round(255 / (1 + math.exp(exponent)))


REFERENCE = {VoiFunction.LINEAR: linear, VoiFunction.LINEAR_EXACT: linear_exact, VoiFunction.SIGMOID: sigmoid}


def header(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 4, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


# --- window functions ----------------------------------------------------------------------------


@pytest.mark.parametrize("function", list(VoiFunction))
@pytest.mark.parametrize(("center", "width"), [(40, 400), (-600, 1500), (2048, 4096), (0.5, 1), (100.25, 7.5)])
def test_window_matches_the_standard(function: VoiFunction, center: float, width: float) -> None:
    xs = np.concatenate([np.arange(-1100.0, 3100.0, 7.0), np.arange(center - 10, center + 10, 0.25)])
    got = render.apply_window(xs, Window(center, width, function))
    want = [REFERENCE[function](float(x), center, width) for x in xs]
    assert got.dtype == np.uint8
    assert got.tolist() == want


def test_linear_width_one_is_a_threshold() -> None:
    # PS3.3 C.11.2.1.2.1 note 5: values below the center black, the others white
    got = render.apply_window(np.array([99.0, 99.5, 100.0, 101.0]), Window(100, 1))
    assert got.tolist() == [0, 0, 255, 255]


@pytest.mark.parametrize(
    ("window", "ok"),
    [
        (Window(0, 1, VoiFunction.LINEAR), True),
        (Window(0, 0.5, VoiFunction.LINEAR), False),
        (Window(0, 0.5, VoiFunction.LINEAR_EXACT), True),
        (Window(0, 0, VoiFunction.SIGMOID), False),
        (Window(math.inf, 10), False),
    ],
)
def test_window_validity(window: Window, ok: bool) -> None:
    assert (window.problem() is None) is ok


# --- grayscale pipeline ---------------------------------------------------------------------------


def test_rescale_then_window() -> None:
    stored = np.array([[0, 500, 1000, 1500], [2000, 2500, 3000, 4095]] * 2, dtype=np.uint16)
    ds = header(RescaleSlope="2", RescaleIntercept="-1024")
    got = render.grayscale_to_8bit(stored, ds, Window(40, 400))
    want = [[linear(2 * int(v) - 1024, 40, 400) for v in row] for row in stored]
    assert got.tolist() == want


def test_instance_window_and_function_when_no_window_is_asked() -> None:
    stored = np.arange(0, 4096, 256, dtype=np.uint16).reshape(4, 4)
    ds = header(WindowCenter=["1000", "50"], WindowWidth=["2000", "100"], VOILUTFunction="SIGMOID")
    got = render.grayscale_to_8bit(stored, ds, None)
    assert got.tolist() == [[sigmoid(int(v), 1000, 2000) for v in row] for row in stored]
    asked = render.grayscale_to_8bit(stored, ds, Window(2000, 10, VoiFunction.LINEAR_EXACT))
    assert asked.tolist() == [[linear_exact(int(v), 2000, 10) for v in row] for row in stored]


def test_full_range_without_any_window() -> None:
    stored = np.array([[100, 200], [300, 1100]], dtype=np.uint16)
    got = render.grayscale_to_8bit(stored, header(), None)
    assert got.min() == 0 and got.max() == 255
    c, w = (100 + 1100 + 1) / 2, 1100 - 100 + 1
    assert got.tolist() == [[linear(int(v), c, w) for v in row] for row in stored]


def test_unusable_instance_window_falls_back_to_full_range() -> None:
    stored = np.array([[0, 10], [20, 30]], dtype=np.uint16)
    got = render.grayscale_to_8bit(stored, header(WindowCenter="10", WindowWidth="0"), None)
    assert got.min() == 0 and got.max() == 255


def test_monochrome1_is_inverted() -> None:
    stored = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    mono2 = render.grayscale_to_8bit(stored, header(), Window(2000, 4000))
    mono1 = render.grayscale_to_8bit(stored, header(PhotometricInterpretation="MONOCHROME1"), Window(2000, 4000))
    assert (mono1 == 255 - mono2).all()
    assert mono1[0, 0] == 255  # the minimum is white


def test_voi_lut_sequence() -> None:
    ds = header()
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.LUTData = [0, 10, 200, 255]
    ds.VOILUTSequence = [item]
    got = render.grayscale_to_8bit(np.array([[0, 1], [2, 9]], dtype=np.uint16), ds, None)
    assert got.tolist() == [[0, 10], [200, 255]]  # past the table: its last value


def test_signed_values_are_sign_extended() -> None:
    ds = header(PixelRepresentation=1, BitsStored=12)
    raw = np.array([0x0FFF, 0x0800, 0x07FF, 0x0001], dtype="<u2")  # -1, -2048, 2047, 1 in 12 bits
    frame = np.tile(raw, 4).tobytes()
    stored = render.decode_frame(ds, ExplicitVRLittleEndian, frame)
    assert stored[0].tolist() == [-1, -2048, 2047, 1]


def test_bits_above_bits_stored_are_ignored() -> None:
    frame = np.full(16, 0xF005, dtype="<u2").tobytes()  # overlay bits set above 12
    stored = render.decode_frame(header(), ExplicitVRLittleEndian, frame)
    assert (stored == 5).all()


@pytest.mark.parametrize("syntax", [*factory.NATIVE_SYNTAXES, RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_decode_one_frame_of_a_multiframe(syntax: str) -> None:
    ds = factory.make_instance(transfer_syntax=syntax, rows=64, columns=64, number_of_frames=3)
    data = factory.part10_bytes(ds)
    found = frames_mod.read_frames(data, [2])
    stored = render.decode_frame(factory.read(data), found.transfer_syntax_uid, found.frames[0])
    assert (stored == factory.read(data).pixel_array[1]).all()


# --- colour -----------------------------------------------------------------------------------------


def rgb_header(**attrs: object) -> Dataset:
    rgb: dict[str, object] = {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB", "BitsAllocated": 8}
    rgb.update(BitsStored=8, HighBit=7, PlanarConfiguration=0)
    return header(**{**rgb, **attrs})


def test_rgb_passes_through_unchanged() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    stored = render.decode_frame(rgb_header(), ExplicitVRLittleEndian, rgb.tobytes())
    assert (render.to_display(stored, rgb_header(), Window(0, 1)) == rgb).all()  # no VOI on colour


def test_planar_rgb() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    planar = np.moveaxis(rgb, -1, 0).tobytes()
    stored = render.decode_frame(rgb_header(PlanarConfiguration=1), ExplicitVRLittleEndian, planar)
    assert (stored == rgb).all()


def test_ybr_full_becomes_rgb() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    ds = rgb_header(PhotometricInterpretation="YBR_FULL")
    display = render.to_display(render.decode_frame(ds, ExplicitVRLittleEndian, ybr.tobytes()), ds)
    assert np.abs(display.astype(int) - rgb.astype(int)).max() <= 3


def test_16_bit_rgb_is_scaled_to_8_bits() -> None:
    ds = rgb_header(BitsAllocated=16, BitsStored=16, HighBit=15)
    stored = np.full((4, 4, 3), 0xABCD, dtype=np.uint16)
    assert (render.to_display(stored, ds) == 0xAB).all()


def test_palette_color() -> None:
    ds = header(PhotometricInterpretation="PALETTE COLOR", BitsAllocated=8, BitsStored=8, HighBit=7)
    ramp = np.arange(256, dtype="<u2") * 257  # 16-bit entries
    for colour, table in (("Red", ramp), ("Green", ramp[::-1].copy()), ("Blue", np.full(256, 0x8000, "<u2"))):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.tobytes())
    stored = render.decode_frame(ds, ExplicitVRLittleEndian, bytes(range(16)))
    display = render.to_display(stored, ds)
    assert display.shape == (4, 4, 3) and display.dtype == np.uint8
    assert display[0, 1].tolist() == [1, 254, 128]


def test_non_image_is_not_acceptable() -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    with pytest.raises(NotAcceptable, match="not an image"):
        render.check_image(ds, render.JPEG)


# --- viewport ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("viewport", "region", "size"),
    [
        (Viewport(100, 100), (512, 256), (100, 50)),
        (Viewport(100, 100), (256, 512), (50, 100)),
        (Viewport(1024, 300), (512, 512), (300, 300)),  # enlarged to fit
        (Viewport(1024, 1024, upscale=False), (64, 32), (64, 32)),
        (Viewport(None, 50), (200, 100), (100, 50)),  # WADO-URI rows alone
        (Viewport(30, None), (200, 100), (30, 15)),
    ],
)
def test_output_size_keeps_the_aspect_ratio(viewport: Viewport, region: tuple[int, int], size: tuple[int, int]) -> None:
    assert render.output_size(viewport, *region) == size


def gradient(width: int = 8, height: int = 6) -> Image.Image:
    arr = (np.arange(height)[:, None] * 16 + np.arange(width)[None, :]).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def test_crop_and_flip() -> None:
    image = gradient()
    arr = np.asarray(image)
    same = render.fit(image, Viewport(4, 3, sx=2, sy=1, sw=4, sh=3))
    assert (np.asarray(same) == arr[1:4, 2:6]).all()
    flipped = render.fit(image, Viewport(4, 3, sx=2, sy=1, sw=-4, sh=-3))
    assert (np.asarray(flipped) == arr[1:4, 2:6][::-1, ::-1]).all()
    elided = render.fit(image, Viewport(8, 5, sx=None, sy=1, sw=None, sh=None))  # to the right and bottom edges
    assert (np.asarray(elided) == arr[1:, :]).all()


def test_region_outside_the_image_is_400() -> None:
    with pytest.raises(InvalidQuery, match="not inside"):
        render.fit(gradient(), Viewport(10, 10, sx=4, sy=0, sw=8, sh=2))


def test_normalized_region() -> None:
    got = render.fit(gradient(), Viewport(region=(0.25, 0.5, 0.75, 1.0)))
    assert (np.asarray(got) == np.asarray(gradient())[3:6, 2:6]).all()


# --- encoding -----------------------------------------------------------------------------------------


def test_encodings() -> None:
    image = gradient(64, 48)
    jpeg = render.encode(image, render.JPEG, quality=75)
    assert jpeg[:2] == b"\xff\xd8" and b"\xff\xc0" in jpeg and b"\xff\xc2" not in jpeg  # baseline, not progressive
    assert (np.asarray(Image.open(io.BytesIO(render.encode(image, render.PNG)))) == np.asarray(image)).all()
    gif = Image.open(io.BytesIO(render.encode(image, render.GIF)))
    assert (np.asarray(gif.convert("L")) == np.asarray(image)).all()
    animation = Image.open(io.BytesIO(render.encode_animation([image, image.rotate(180)], 40)))
    assert animation.n_frames == 2
    assert len(render.encode(image, render.JPEG, quality=10)) < len(render.encode(image, render.JPEG, quality=95))


# --- query parameters -----------------------------------------------------------------------------------


def test_parse_window() -> None:
    assert parse_window("40,400,linear") == Window(40, 400, VoiFunction.LINEAR)
    assert parse_window("-600,1500,linear-exact").function is VoiFunction.LINEAR_EXACT
    assert parse_window("1.5e2,10,sigmoid") == Window(150, 10, VoiFunction.SIGMOID)
    for bad in ("40,400", "40,400,cubic", "a,400,linear", "40,0.5,linear", "40,0,sigmoid", "40,,linear"):
        with pytest.raises(InvalidQuery):
            parse_window(bad)


def test_parse_viewport() -> None:
    assert parse_viewport("512,256", size_only=False) == Viewport(512, 256)
    assert parse_viewport("512,512,,,256,256", size_only=False) == Viewport(512, 512, None, None, 256, 256)
    assert parse_viewport("100,100,10,20,-50,50.5", size_only=False) == Viewport(100, 100, 10, 20, -50, 50.5)
    for bad in ("512", "0,10", "10,x", "10,10,", "10,10,1,2,3,4,5", "10,10,0,0,0,5", "99999,10"):
        with pytest.raises(InvalidQuery):
            parse_viewport(bad, size_only=False)
    with pytest.raises(InvalidQuery, match="thumbnail"):
        parse_viewport("64,64,0,0,10,10", size_only=True)


def test_parse_rendered_query() -> None:
    query = parse_rendered_query(
        [("window", "40,400,linear"), ("quality", "80"), ("annotation", "patient,technique")], None
    )
    assert query.options == render.RenderOptions(render.JPEG, Window(40, 400), None, 80)
    assert query.warnings == ("The following annotation values are not supported: patient,technique",)
    for params in (
        [("quality", "0")],
        [("quality", "101")],
        [("annotation", "")],
        [("annotation", "patient,!")],
        [("frobnicate", "1")],
        [("window", "1,2,linear"), ("window", "1,2,linear")],
        [("iccprofile", "srgb")],
    ):
        with pytest.raises(InvalidQuery):
            parse_rendered_query(params, None)
    thumb = parse_thumbnail_query([], "image/png")
    assert thumb.options.media_type == render.PNG
    assert thumb.options.viewport == Viewport(128, 128, upscale=False)
    with pytest.raises(InvalidQuery):
        parse_thumbnail_query([("window", "1,2,linear")], None)


@pytest.mark.parametrize(
    ("header_value", "param", "chosen"),
    [
        (None, None, "image/jpeg"),
        ("*/*", None, "image/jpeg"),
        ("image/*", None, "image/jpeg"),
        ("image/png", None, "image/png"),
        ("image/webp, image/gif;q=0.5, image/png;q=0.8", None, "image/png"),
        ('multipart/related; type="image/png"', None, "image/png"),
        ("*/*", "image/gif", "image/gif"),
        ("*/*", "image/webp,image/png", "image/png"),
        ("image/png", "image/webp", "image/png"),  # nothing supported in the parameter: the header
    ],
)
def test_choose_rendered_media(header_value: str | None, param: str | None, chosen: str) -> None:
    assert choose_rendered_media(header_value, param) == chosen


def test_choose_rendered_media_errors() -> None:
    with pytest.raises(NotAcceptable, match="image/jpeg"):
        choose_rendered_media("application/dicom", None)
    with pytest.raises(NotAcceptable):
        choose_rendered_media("image/webp, image/jpeg;q=0", None)
    with pytest.raises(InvalidQuery, match="mixes"):
        choose_rendered_media("application/dicom, image/jpeg", None)
    with pytest.raises(InvalidQuery, match="wildcards"):
        choose_rendered_media(None, "image/*")


# --- WADO-URI query ------------------------------------------------------------------------------------------

UIDS = [("studyUID", "1.2.3"), ("seriesUID", "1.2.3.4"), ("objectUID", "1.2.3.4.5")]


def uri(*extra: tuple[str, str], accept: str | None = None) -> object:
    return parse_uri_request("t", [("requestType", "WADO"), *UIDS, *extra], accept)


def test_uri_defaults_and_content_types() -> None:
    plain = parse_uri_request("t", [("requestType", "WADO"), *UIDS], None)
    assert plain.media_type is None  # decided by the instance: single-frame image -> JPEG
    assert plain.key.sop_instance_uid == "1.2.3.4.5" and plain.key.tenant_id == "t"
    dicom = parse_uri_request("t", [("requestType", "WADO"), *UIDS, ("contentType", "application/dicom")], None)
    assert dicom.media_type == APPLICATION_DICOM
    png = parse_uri_request("t", [("requestType", "WADO"), *UIDS, ("contentType", "image/png")], None)
    assert png.media_type == render.PNG
    rendering = [("rows", "64"), ("windowCenter", "40"), ("windowWidth", "400"), ("frameNumber", "2")]
    sized = parse_uri_request("t", [("requestType", "WADO"), *UIDS, *rendering, ("imageQuality", "70")], None)
    assert sized.media_type == render.JPEG and sized.frame_number == 2
    assert sized.options.viewport == Viewport(None, 64)
    assert sized.options.window == Window(40, 400) and sized.options.quality == 70
    by_accept = parse_uri_request("t", [("requestType", "WADO"), *UIDS], "application/dicom")
    assert by_accept.media_type == APPLICATION_DICOM


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ([*UIDS], "requestType is missing"),
        ([("requestType", "RSS"), *UIDS], "not supported"),
        ([("requestType", "WADO"), *UIDS[:2]], "objectUID"),
        ([("requestType", "WADO"), *UIDS, ("studyUID", "1.2")], "more than once"),
        ([("requestType", "WADO"), ("studyUID", "1..2"), *UIDS[1:]], "studyUID"),
        ([("requestType", "WADO"), *UIDS, ("bogus", "1")], "unknown"),
        ([("requestType", "WADO"), *UIDS, ("contentType", "application/dicom"), ("rows", "10")], "only to rendered"),
        ([("requestType", "WADO"), *UIDS, ("contentType", "image/jpeg"), ("transferSyntax", "1.2.3")], "only to appl"),
        ([("requestType", "WADO"), *UIDS, ("windowCenter", "40")], "together"),
        ([("requestType", "WADO"), *UIDS, ("windowCenter", "40"), ("windowWidth", "0")], "at least 1"),
        ([("requestType", "WADO"), *UIDS, ("region", "0.5,0,0.4,1")], "xmin < xmax"),
        ([("requestType", "WADO"), *UIDS, ("frameNumber", "0")], "positive"),
        ([("requestType", "WADO"), *UIDS, ("contentType", "application/dicom"), ("transferSyntax", "x")], "Syntax"),
        ([("requestType", "WADO"), *UIDS, ("contentType", "application/dicom"), ("anonymize", "yes")], "anonymize"),
        ([("requestType", "WADO"), *UIDS, ("presentationUID", "1.2")], "presentation"),
        ([("requestType", "WADO"), *UIDS, ("contentType", "application/dicom;transfer-syntax=1.2")], "forbidden"),
    ],
)
def test_uri_errors(params: list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):  # InvalidQuery or InvalidUID: both 400
        parse_uri_request("t", params, None)


def test_uri_unsupported_content_type_is_406() -> None:
    with pytest.raises(NotAcceptable):
        parse_uri_request("t", [("requestType", "WADO"), *UIDS, ("contentType", "video/mpeg")], None)
