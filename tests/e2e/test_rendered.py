"""Rendered resources, thumbnails and WADO-URI against a running archive (PS3.18 §9, §10.4).

Instances go in over DIMSE (pynetdicom) as the factory writes them, one goes
in over STOW-RS to another tenant; every expected image is computed here from
pydicom's ``pixel_array`` of the sent data set with the formulas of PS3.3
C.11.1 (rescale) and C.11.2.1.2 / C.11.2.1.3 (window), and compared with
what Pillow decodes from the answer: equal for PNG, close for JPEG.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
)

from tests import factory
from tests.e2e.conftest import (
    Archive,
    Sent,
    as_sent,
    c_store_files,
    content_type_params,
    parse_multipart,
    wait_for_instances,
)

pytestmark = pytest.mark.e2e

ROWS, COLUMNS = 96, 128  # not square: the aspect ratio shows
PATIENT = {"PatientID": "RENDER-1", "PatientName": "Render^Rita", "AccessionNumber": "RENDACC1"}


def _rgb_instance() -> Dataset:
    ds = factory.make_instance(
        **PATIENT, SeriesNumber=5, Modality="OT", sop_class_uid=SecondaryCaptureImageStorage, rows=ROWS, columns=COLUMNS
    )
    for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth"):
        delattr(ds, keyword)
    r = np.arange(ROWS, dtype=np.uint16)[:, None]
    c = np.arange(COLUMNS, dtype=np.uint16)[None, :]
    rgb = np.stack([(r * 2) % 256 + 0 * c, (c * 2) % 256 + 0 * r, (r + c) % 256], axis=-1).astype(np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    ds["PixelData"].VR = "OB"
    return ds


def _sr_instance() -> Dataset:
    ds = factory.make_instance(**PATIENT, SeriesNumber=9, Modality="SR", sop_class_uid=BasicTextSRStorage)
    for keyword in (
        "PixelData", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
        "BitsStored", "HighBit", "PixelRepresentation", "WindowCenter", "WindowWidth", "RescaleIntercept",
        "RescaleSlope", "RescaleType", "PixelSpacing",
    ):  # fmt: skip
        delattr(ds, keyword)
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    return ds


def _instances() -> dict[str, Dataset]:
    size = {"rows": ROWS, "columns": COLUMNS}
    ct = factory.make_series(5, **PATIENT, SeriesNumber=1, **size)
    return {
        **{f"ct{i + 1}": ds for i, ds in enumerate(ct)},
        "mono1": factory.make_instance(**PATIENT, SeriesNumber=2, PhotometricInterpretation="MONOCHROME1", **size),
        "jls": factory.make_instance(
            **PATIENT, SeriesNumber=3, transfer_syntax=JPEGLSLossless, number_of_frames=3, **size
        ),
        "j2k": factory.make_instance(
            **PATIENT, SeriesNumber=4, transfer_syntax=JPEG2000Lossless, WindowCenter="1000", WindowWidth="3000", **size
        ),
        "rgb": _rgb_instance(),
        "sr": _sr_instance(),
    }


def _store(archive: Archive, datasets: list[Dataset], tmp: Path) -> list[Sent]:
    """Send the factory's files as they are over one association."""
    return c_store_files(archive, datasets, tmp, "RENDERSCU")


@pytest.fixture(scope="module")
def sent(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sent]:
    named = _instances()
    stored = _store(archive, list(named.values()), tmp_path_factory.mktemp("rendered"))
    return dict(zip(named, stored, strict=True))


@pytest.fixture
def http(archive: Archive) -> Iterator[httpx.Client]:
    with archive.http() as client:
        yield client


# --- what the standard says the pixels are ----------------------------------------------------------


def expected_gray(ds: Dataset, frame: int = 0, window: tuple[float, float, str] | None = None) -> np.ndarray:
    """Rescale (PS3.3 C.11.1.1.2) then window (C.11.2.1.2.1 / C.11.2.1.3), 0..255, MONOCHROME1 inverted."""
    arr = ds.pixel_array
    stored = arr[frame] if arr.ndim == 3 else arr
    x = stored.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w, function = window or (float(ds.WindowCenter), float(ds.WindowWidth), "linear")
    if function == "linear":
        low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        y = np.select([x <= low, x > high], [0.0, 255.0], ((x - (c - 0.5)) / (w - 1) + 0.5) * 255)
    elif function == "linear-exact":
        y = np.select([x <= c - w / 2, x > c + w / 2], [0.0, 255.0], ((x - c) / w + 0.5) * 255)
    else:
        y = 255 / (1 + np.exp(-4 * (x - c) / w))
    out = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return 255 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


def image(response: httpx.Response, media_type: str) -> Image.Image:
    assert response.status_code == 200, f"{response.status_code}: {response.text[:300]}"
    assert response.headers["content-type"].split(";")[0] == media_type
    return Image.open(io.BytesIO(response.content))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """JPEG at the default quality: small differences only."""
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 12, (diff.mean(), diff.max())


def assert_error(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, f"{response.status_code}: {response.text[:300]}"
    assert reason in response.text, response.text
    assert reason in response.headers.get("warning", ""), response.headers


# --- /rendered ---------------------------------------------------------------------------------------


def test_ct_rendered_as_png_is_the_standard_window(http: httpx.Client, sent: dict[str, Sent]) -> None:
    ct = sent["ct1"]
    img = image(http.get(ct.url_path + "/rendered", headers={"Accept": "image/png"}), "image/png")
    assert img.size == (COLUMNS, ROWS) and img.mode == "L"
    assert (pixels(img) == expected_gray(ct.ds)).all()


def test_ct_rendered_as_jpeg_by_default(http: httpx.Client, sent: dict[str, Sent]) -> None:
    ct = sent["ct2"]
    for accept in ("*/*", "image/jpeg", None):
        headers = {"Accept": accept} if accept else {}
        img = image(http.get(ct.url_path + "/rendered", headers=headers), "image/jpeg")
        assert img.format == "JPEG" and img.size == (COLUMNS, ROWS)
        assert_close(pixels(img), expected_gray(ct.ds))
    by_param = http.get(ct.url_path + "/rendered", params={"accept": "image/png"}, headers={"Accept": "*/*"})
    assert (pixels(image(by_param, "image/png")) == expected_gray(ct.ds)).all()


@pytest.mark.parametrize("function", ["linear", "linear-exact", "sigmoid"])
def test_window_parameter(http: httpx.Client, sent: dict[str, Sent], function: str) -> None:
    ct = sent["ct1"]
    url = ct.url_path + "/rendered"
    windowed = image(http.get(url, params={"window": f"1000,3000,{function}", "accept": "image/png"}), "image/png")
    assert (pixels(windowed) == expected_gray(ct.ds, window=(1000, 3000, function))).all()
    default = pixels(image(http.get(url, params={"accept": "image/png"}), "image/png"))
    assert (pixels(windowed) != default).any()


def test_viewport_and_quality(http: httpx.Client, sent: dict[str, Sent]) -> None:
    ct = sent["ct1"]
    url = ct.url_path + "/rendered"
    fitted = image(http.get(url, params={"viewport": "64,64"}), "image/jpeg")
    assert fitted.size == (64, 48)  # 128 x 96 fitted into 64 x 64, aspect kept
    assert image(http.get(url, params={"viewport": "400,100"}), "image/jpeg").size == (133, 100)
    # a 50 x 40 region from (10, 20), flipped horizontally, at its own size: the same pixels
    region = http.get(url, params={"viewport": "50,40,10,20,-50,40", "accept": "image/png"})
    want = expected_gray(ct.ds)[20:60, 10:60][:, ::-1]
    assert (pixels(image(region, "image/png")) == want).all()
    small = http.get(url, params={"quality": "5"})
    large = http.get(url, params={"quality": "100"})
    assert len(small.content) < len(large.content)


def test_monochrome1(http: httpx.Client, sent: dict[str, Sent]) -> None:
    mono1 = sent["mono1"]
    img = image(http.get(mono1.url_path + "/rendered", params={"accept": "image/png"}), "image/png")
    want = expected_gray(mono1.ds)
    assert (pixels(img) == want).all()
    as_mono2 = expected_gray(sent["ct1"].ds)  # the same stored values in MONOCHROME2
    assert (want == 255 - as_mono2).all()


def test_rgb(http: httpx.Client, sent: dict[str, Sent]) -> None:
    rgb = sent["rgb"]
    png = image(http.get(rgb.url_path + "/rendered", headers={"Accept": "image/png"}), "image/png")
    assert png.mode == "RGB" and (pixels(png) == rgb.ds.pixel_array).all()
    jpeg = image(http.get(rgb.url_path + "/rendered"), "image/jpeg")
    assert jpeg.mode == "RGB" and np.abs(pixels(jpeg).astype(int) - rgb.ds.pixel_array).mean() < 3


def test_compressed_and_multiframe(http: httpx.Client, sent: dict[str, Sent]) -> None:
    j2k = sent["j2k"]
    png = image(http.get(j2k.url_path + "/rendered", params={"accept": "image/png"}), "image/png")
    assert (pixels(png) == expected_gray(j2k.ds)).all()  # its own window, 1000/3000

    jls = sent["jls"]
    second = http.get(jls.url_path + "/frames/2/rendered", params={"accept": "image/png"})
    assert (pixels(image(second, "image/png")) == expected_gray(jls.ds, frame=1)).all()
    first = http.get(jls.url_path + "/rendered", params={"accept": "image/png"})  # no frame: the first
    assert (pixels(image(first, "image/png")) == expected_gray(jls.ds, frame=0)).all()
    both = http.get(jls.url_path + "/frames/3,1/rendered", headers={"Accept": "image/png"})
    assert both.status_code == 200
    media, params = content_type_params(both.headers["content-type"])
    assert media == "multipart/related" and params["type"] == "image/png"
    parts = parse_multipart(both)
    assert [p.headers["content-type"] for p in parts] == ["image/png", "image/png"]
    for part, frame in zip(parts, (2, 0), strict=True):
        assert (pixels(Image.open(io.BytesIO(part.content))) == expected_gray(jls.ds, frame=frame)).all()
    gif = image(http.get(jls.url_path + "/rendered", headers={"Accept": "image/gif"}), "image/gif")
    assert gif.n_frames == 3
    for frame in range(3):
        gif.seek(frame)
        assert (pixels(gif.convert("L")) == expected_gray(jls.ds, frame=frame)).all()


def test_series_and_study_rendered(http: httpx.Client, sent: dict[str, Sent]) -> None:
    ct = sent["ct1"]
    series = http.get(f"/dicom-web/studies/{ct.study}/series/{ct.series}/rendered")
    assert series.status_code == 200, series.text
    media, params = content_type_params(series.headers["content-type"])
    assert (media, params["type"]) == ("multipart/related", "image/jpeg")
    parts = parse_multipart(series)
    assert len(parts) == 5
    for part, name in zip(parts, ("ct1", "ct2", "ct3", "ct4", "ct5"), strict=True):  # Instance Number order
        assert_close(pixels(Image.open(io.BytesIO(part.content))), expected_gray(sent[name].ds))
    study = http.get(f"/dicom-web/studies/{ct.study}/rendered", headers={"Accept": "image/png"})
    parts = parse_multipart(study)
    assert len(parts) == len(sent) - 1  # every image; the SR is left out
    assert all(p.headers["content-type"] == "image/png" for p in parts)


# --- thumbnails --------------------------------------------------------------------------------------


def test_thumbnails(http: httpx.Client, sent: dict[str, Sent]) -> None:
    ct3 = sent["ct3"]
    study = f"/dicom-web/studies/{ct3.study}"
    middle = http.get(ct3.url_path + "/thumbnail")
    thumb = image(middle, "image/jpeg")
    assert thumb.size == (128, 96)  # already within 128 x 128: not enlarged
    series = http.get(f"{study}/series/{ct3.series}/thumbnail")
    assert series.content == middle.content  # the middle instance by Instance Number
    assert http.get(f"{study}/thumbnail").content == middle.content  # the first series
    small = image(http.get(ct3.url_path + "/thumbnail", params={"viewport": "32,32"}), "image/jpeg")
    assert small.size == (32, 24)
    jls = sent["jls"]
    frame_thumb = image(http.get(jls.url_path + "/frames/3/thumbnail", headers={"Accept": "image/png"}), "image/png")
    assert (pixels(frame_thumb) == expected_gray(jls.ds, frame=2)).all()
    instance_thumb = image(http.get(jls.url_path + "/thumbnail", headers={"Accept": "image/png"}), "image/png")
    assert (pixels(instance_thumb) == expected_gray(jls.ds, frame=1)).all()  # the middle frame
    assert_error(http.get(ct3.url_path + "/thumbnail", params={"viewport": "32,32,0,0,10,10"}), 400, "vw,vh")


def test_series_thumbnail_follows_new_instances(archive: Archive, http: httpx.Client, tmp_path: Path) -> None:
    patient = {"PatientID": "RENDER-2", "PatientName": "Render^Rolf", "AccessionNumber": "RENDACC2"}
    first = _store(archive, factory.make_series(3, **patient, rows=40, columns=40), tmp_path)
    series = f"/dicom-web/studies/{first[0].study}/series/{first[0].series}"
    assert http.get(series + "/thumbnail").content == http.get(first[1].url_path + "/thumbnail").content
    _store(archive, factory.make_series(2, first_instance=4, **patient, rows=40, columns=40), tmp_path)
    wanted = http.get(first[2].url_path + "/thumbnail").content  # of instances 1..5 the middle is 3
    deadline = time.monotonic() + 10
    while http.get(series + "/thumbnail").content != wanted:  # invalidated with the study's generation
        assert time.monotonic() < deadline, "the series thumbnail still shows the old middle instance"
        time.sleep(0.2)


# --- WADO-URI ----------------------------------------------------------------------------------------


def uri_params(s: Sent, **extra: str) -> dict[str, str]:
    return {"requestType": "WADO", "studyUID": s.study, "seriesUID": s.series, "objectUID": s.sop, **extra}


def test_wado_uri(http: httpx.Client, sent: dict[str, Sent]) -> None:
    ct = sent["ct1"]
    dicom = http.get("/wado", params=uri_params(ct, contentType="application/dicom"))
    assert dicom.status_code == 200 and dicom.headers["content-type"] == "application/dicom"
    stored = http.get(ct.url_path, headers={"Accept": "application/dicom"})  # WADO-RS: the stored file
    assert stored.status_code == 200 and dicom.content == stored.content
    assert factory.dataset_bytes(dicom.content) == factory.dataset_bytes(ct.data)  # the SCP wrote its own meta
    same_syntax = http.get(
        "/wado", params=uri_params(ct, contentType="application/dicom", transferSyntax=ExplicitVRLittleEndian)
    )
    assert same_syntax.content == dicom.content
    converted = http.get(
        "/wado", params=uri_params(ct, contentType="application/dicom", transferSyntax=JPEGLSLossless)
    )  # through domain/transcode.py
    assert converted.status_code == 200, converted.text
    as_jls = factory.read(converted.content)
    assert as_jls.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert (as_jls.pixel_array == ct.ds.pixel_array).all()
    default = image(http.get("/wado", params=uri_params(ct)), "image/jpeg")  # single frame: JPEG
    assert_close(pixels(default), expected_gray(ct.ds))
    png = http.get(
        "/wado",
        params=uri_params(ct, contentType="image/png", windowCenter="1000", windowWidth="3000", rows="48"),
    )
    img = image(png, "image/png")
    assert img.size == (64, 48)
    full = http.get("/wado", params=uri_params(ct, contentType="image/png", windowCenter="1000", windowWidth="3000"))
    assert (pixels(image(full, "image/png")) == expected_gray(ct.ds, window=(1000, 3000, "linear"))).all()
    jls = sent["jls"]
    multi = http.get("/wado", params=uri_params(jls))  # multi-frame: the file
    assert multi.headers["content-type"] == "application/dicom"
    assert factory.dataset_bytes(multi.content) == factory.dataset_bytes(jls.data)
    frame = http.get("/wado", params=uri_params(jls, contentType="image/png", frameNumber="2"))
    assert (pixels(image(frame, "image/png")) == expected_gray(jls.ds, frame=1)).all()


def test_wado_uri_tenant(archive: Archive, http: httpx.Client, sent: dict[str, Sent]) -> None:
    ds = factory.make_instance(PatientID="RENDER-T", AccessionNumber="RENDACCT", rows=32, columns=32)
    archive.client(archive.tenant_url("acme")).store_instances([ds])
    tenant_sent = as_sent(ds)
    wait_for_instances(http, archive.tenant_url("acme"), [tenant_sent.sop])
    got = http.get("/tenants/acme/wado", params=uri_params(tenant_sent, contentType="image/png"))
    assert image(got, "image/png").size == (32, 32)
    assert_error(http.get("/wado", params=uri_params(tenant_sent)), 404, "not")  # not in the default tenant
    assert_error(http.get("/tenants/acme/wado", params=uri_params(sent["ct1"])), 404, "not")


# --- errors ------------------------------------------------------------------------------------------


def test_rendered_errors(http: httpx.Client, sent: dict[str, Sent]) -> None:
    ct = sent["ct1"]
    url = ct.url_path + "/rendered"
    assert_error(http.get(url, params={"window": "40,400"}), 400, "center,width,function")
    assert_error(http.get(url, params={"window": "40,0,linear"}), 400, "at least 1")
    assert_error(http.get(url, params={"viewport": "0,10"}), 400, "viewport width")
    assert_error(http.get(url, params={"viewport": "10,10,100,0,100,10"}), 400, "not inside")
    assert_error(http.get(url, params={"quality": "101"}), 400, "quality")
    assert_error(http.get(url, params={"shade": "1"}), 400, "unknown query parameter")
    assert_error(http.get(url, params={"annotation": ""}), 400, "annotation")
    assert_error(http.get(url, headers={"Accept": "application/dicom"}), 406, "image/jpeg")
    assert_error(http.get(url, headers={"Accept": "image/jpeg, application/dicom"}), 400, "mixes")
    warned = http.get(url, params={"annotation": "patient"})
    assert warned.status_code == 200
    assert "annotation values are not supported: patient" in warned.headers["warning"]
    sr = sent["sr"]
    assert_error(http.get(sr.url_path + "/rendered"), 406, "not an image")
    assert_error(http.get(sr.url_path + "/thumbnail"), 406, "not an image")
    assert_error(http.get(f"/dicom-web/studies/{sr.study}/series/{sr.series}/rendered"), 406, "not an image")
    missing = f"/dicom-web/studies/{ct.study}/series/{ct.series}/instances/1.2.3.4.5.6"
    assert_error(http.get(missing + "/rendered"), 404, "not")
    assert_error(http.get(missing + "/thumbnail"), 404, "not")
    assert_error(http.get("/dicom-web/studies/1.2.3.999/rendered"), 404, "not found")
    assert_error(http.get("/dicom-web/studies/1.2.3.999/thumbnail"), 404, "not found")
    assert_error(http.get(sent["jls"].url_path + "/frames/4/rendered"), 404, "frame 4")
    assert_error(http.get(sent["jls"].url_path + "/frames/0/rendered"), 400, "frame list")


def test_wado_uri_errors(http: httpx.Client, sent: dict[str, Sent]) -> None:
    ct = sent["ct1"]
    params = uri_params(ct)
    assert_error(http.get("/wado", params={k: v for k, v in params.items() if k != "objectUID"}), 400, "objectUID")
    assert_error(http.get("/wado", params={**params, "requestType": "RSS"}), 400, "requestType")
    assert_error(http.get("/wado", params={**params, "objectUID": "1.2.3.4.5.6"}), 404, "not found")
    assert_error(http.get("/wado", params={**params, "windowCenter": "40"}), 400, "together")
    assert_error(http.get("/wado", params={**params, "frameNumber": "2"}), 400, "frameNumber 2")
    assert_error(http.get("/wado", params={**params, "contentType": "application/dicom", "rows": "8"}), 400, "rows")
    mpeg2 = "1.2.840.10008.1.2.4.100"  # a video syntax: no transcoder turns a CT into it
    assert_error(
        http.get("/wado", params={**params, "contentType": "application/dicom", "transferSyntax": mpeg2}), 406, mpeg2
    )
    assert_error(http.get("/wado", params=uri_params(sent["sr"], contentType="image/jpeg")), 406, "not an image")
    sr = http.get("/wado", params=uri_params(sent["sr"]))  # not an image: the file
    assert factory.dataset_bytes(sr.content) == factory.dataset_bytes(sent["sr"].data)
