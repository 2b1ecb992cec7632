"""STOW-RS over HTTP (PS3.18 §10.5) with a real Ingest over the filesystem and journal bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount

from dicomcloud.adapters.filesystem import FileBlobStore
from dicomcloud.adapters.journal_bus import JournalBus
from dicomcloud.domain.messages import STORAGE_QUEUE
from dicomcloud.domain.multipart import Part, encode_multipart_related, new_boundary
from dicomcloud.entrypoints.http import stow
from dicomcloud.errors import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    STATUS_OUT_OF_RESOURCES,
    DicomCloudError,
    Unavailable,
    http_status,
)
from dicomcloud.settings import Settings
from dicomcloud.usecases.ingest import Ingest

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class _Archive:
    settings: Settings
    ingest: Ingest


class _DownBus(JournalBus):
    async def publish(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        raise Unavailable("the bus is down")


async def _on_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DicomCloudError)
    return PlainTextResponse(exc.reason, status_code=http_status(exc))


@dataclass
class Env:
    client: httpx.AsyncClient
    root: Path
    bus: JournalBus
    app: Starlette

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*.dcm"))


def _app(tmp_path: Path, bus: JournalBus, **settings: Any) -> Starlette:
    config = Settings(data_dir=tmp_path, **settings)
    ingest = Ingest(FileBlobStore(config.root), bus, max_instance_bytes=config.max_instance_bytes)
    app = Starlette(
        routes=[Mount("/dicom-web", routes=stow.routes())],
        exception_handlers={DicomCloudError: _on_error},
    )
    app.state.archive = _Archive(config, ingest)
    return app


def _client(app: Starlette) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://archive.test")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    bus = JournalBus(None)
    app = _app(tmp_path, bus, max_stow_bytes=1024 * 1024)
    async with _client(app) as client:
        yield Env(client, tmp_path / "files", bus, app)


def instance(study: str | None = None, **attrs: Any) -> tuple[bytes, Dataset]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P1"
    for name, value in attrs.items():
        setattr(ds, name, value)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), ds


def multipart(
    *contents: bytes, part_type: str = "application/dicom"
) -> tuple[bytes, dict[str, str]]:
    boundary = new_boundary()
    body = b"".join(
        bytes(c)
        for c in encode_multipart_related([Part.of(part_type, c) for c in contents], boundary)
    )
    return body, {
        "content-type": f'multipart/related; type="application/dicom"; boundary={boundary}'
    }


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(body.get(tag, {}).get("Value", []))


async def test_all_stored(env: Env) -> None:
    study = generate_uid()
    (a, ds_a), (b, ds_b) = instance(study), instance(study)
    body, headers = multipart(a, b)
    response = await env.client.post("/dicom-web/studies", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    result = response.json()
    assert result["00081190"] == {
        "vr": "UR",
        "Value": [f"http://archive.test/dicom-web/studies/{study}"],
    }
    refs = _items(result, "00081199")
    assert {r["00081155"]["Value"][0] for r in refs} == {ds_a.SOPInstanceUID, ds_b.SOPInstanceUID}
    for ref in refs:
        assert ref["00081150"] == {"vr": "UI", "Value": [CT_IMAGE]}
        assert ref["00081190"]["Value"][0].startswith(
            f"http://archive.test/dicom-web/studies/{study}/series/"
        )
    assert "00081198" not in result
    assert "warning" not in response.headers
    assert len(env.files()) == 2
    assert {f.read_bytes() for f in env.files()} == {a, b}
    assert len(env.bus._topics[STORAGE_QUEUE].records) == 2


async def test_single_part_application_dicom(env: Env) -> None:
    data, ds = instance()
    response = await env.client.post(
        f"/dicom-web/studies/{ds.StudyInstanceUID}",
        content=data,
        headers={"content-type": "application/dicom"},
    )
    assert response.status_code == 200, response.text
    assert _items(response.json(), "00081199")[0]["00081155"]["Value"] == [ds.SOPInstanceUID]


async def test_type_parameter_absent_is_tolerated(env: Env) -> None:
    data, _ = instance()
    body, headers = multipart(data)
    headers["content-type"] = headers["content-type"].replace('type="application/dicom"; ', "")
    response = await env.client.post("/dicom-web/studies", content=body, headers=headers)
    assert response.status_code == 200


async def test_mixed_with_a_garbage_part_is_202(env: Env) -> None:
    good, ds = instance()
    body, headers = multipart(good, b"this is not DICOM at all")
    response = await env.client.post("/dicom-web/studies", content=body, headers=headers)
    assert response.status_code == 202
    result = response.json()
    assert [r["00081155"]["Value"][0] for r in _items(result, "00081199")] == [ds.SOPInstanceUID]
    (failed,) = _items(result, "00081198")
    assert failed == {"00081197": {"vr": "US", "Value": [STATUS_CANNOT_UNDERSTAND]}}
    assert "DICM" in response.headers["warning"]
    assert response.headers["warning"].startswith('299 archive.test "')
    assert len(env.files()) == 1


async def test_all_failed_is_409(env: Env) -> None:
    body, headers = multipart(b"garbage one", b"garbage two")
    response = await env.client.post("/dicom-web/studies", content=body, headers=headers)
    assert response.status_code == 409
    assert len(_items(response.json(), "00081198")) == 2
    assert len(response.headers.get_list("warning")) == 2
    assert env.files() == []


async def test_wrong_study_in_url_fails_with_a900(env: Env) -> None:
    data, ds = instance()
    other = generate_uid()
    body, headers = multipart(data)
    response = await env.client.post(f"/dicom-web/studies/{other}", content=body, headers=headers)
    assert response.status_code == 409
    result = response.json()
    assert result["00081190"]["Value"] == [f"http://archive.test/dicom-web/studies/{other}"]
    (failed,) = _items(result, "00081198")
    assert failed["00081150"]["Value"] == [CT_IMAGE]
    assert failed["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert failed["00081197"]["Value"] == [STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS]
    assert other in response.headers["warning"]
    assert env.files() == []


async def test_invalid_study_uid_in_url_is_400(env: Env) -> None:
    data, _ = instance()
    body, headers = multipart(data)
    response = await env.client.post("/dicom-web/studies/1.2.abc", content=body, headers=headers)
    assert response.status_code == 400


async def test_part_of_another_media_type_fails_alone(env: Env) -> None:
    data, _ = instance()
    boundary = new_boundary()
    parts = [Part.of("application/dicom", data), Part.of("application/dicom+json", b"{}")]
    body = b"".join(bytes(c) for c in encode_multipart_related(parts, boundary))
    headers = {"content-type": f"multipart/related; boundary={boundary}"}
    response = await env.client.post("/dicom-web/studies", content=body, headers=headers)
    assert response.status_code == 202
    assert "application/dicom+json" in response.headers["warning"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        'multipart/related; type="application/dicom+json"; boundary=x',
        'multipart/related; type="application/dicom+xml"; boundary=x',
        "multipart/mixed; boundary=x",
        "not a media type",
    ],
)
async def test_wrong_media_type_is_415(env: Env, content_type: str) -> None:
    response = await env.client.post(
        "/dicom-web/studies", content=b"{}", headers={"content-type": content_type}
    )
    assert response.status_code == 415
    assert response.text


async def test_missing_content_type_is_415(env: Env) -> None:
    response = await env.client.post("/dicom-web/studies", content=b"x")
    assert response.status_code == 415


async def test_missing_boundary_is_415(env: Env) -> None:
    headers = {"content-type": 'multipart/related; type="application/dicom"'}
    response = await env.client.post("/dicom-web/studies", content=b"x", headers=headers)
    assert response.status_code == 415
    assert "boundary" in response.text


async def test_truncated_body_is_400_and_stores_nothing(env: Env) -> None:
    data, _ = instance()
    body, headers = multipart(data, data)
    response = await env.client.post("/dicom-web/studies", content=body[:-40], headers=headers)
    assert response.status_code == 400
    assert "truncated" in response.text
    assert env.files() == []


async def test_empty_multipart_is_400(env: Env) -> None:
    body, headers = multipart()
    response = await env.client.post("/dicom-web/studies", content=body, headers=headers)
    assert response.status_code == 400


async def test_oversized_by_content_length_is_413(env: Env) -> None:
    body, headers = multipart(b"x" * (1024 * 1024 + 1))
    response = await env.client.post("/dicom-web/studies", content=body, headers=headers)
    assert response.status_code == 413
    assert "limit" in response.text


async def test_oversized_chunked_is_413(env: Env) -> None:
    body, headers = multipart(b"x" * (1024 * 1024 + 1))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    response = await env.client.post("/dicom-web/studies", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert env.files() == []


async def test_bus_unavailable_everywhere_is_503(tmp_path: Path) -> None:
    app = _app(tmp_path, _DownBus(None))
    data, _ = instance()
    body, headers = multipart(data)
    async with _client(app) as client:
        response = await client.post("/dicom-web/studies", content=body, headers=headers)
    assert response.status_code == 503
    (failed,) = _items(response.json(), "00081198")
    assert failed["00081197"]["Value"] == [STATUS_OUT_OF_RESOURCES]


async def test_many_warnings_are_capped(env: Env) -> None:
    body, headers = multipart(*[b"bad"] * (stow.MAX_WARNINGS + 3))
    response = await env.client.post("/dicom-web/studies", content=body, headers=headers)
    assert response.status_code == 409
    warnings = response.headers.get_list("warning")
    assert len(warnings) == stow.MAX_WARNINGS + 1
    assert "3 more failures" in warnings[-1]


async def test_client_disconnect_mid_body_stores_nothing(tmp_path: Path) -> None:
    app = _app(tmp_path, JournalBus(None))
    data, _ = instance()
    body, headers = multipart(data)
    events = [
        {"type": "http.request", "body": body[:100], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return events.pop(0) if events else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/dicom-web/studies",
        "raw_path": b"/dicom-web/studies",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", headers["content-type"].encode()),
            (b"host", b"archive.test"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("archive.test", 80),
        "app": app,
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert list((tmp_path / "files").rglob("*.dcm")) == []


async def test_response_is_valid_json_for_pydicom(env: Env) -> None:
    from pydicom import Dataset as PydicomDataset

    data, _ = instance()
    body, headers = multipart(data, b"junk")
    response = await env.client.post("/dicom-web/studies", content=body, headers=headers)
    ds = PydicomDataset.from_json(orjson.loads(response.content))
    assert ds.ReferencedSOPSequence[0].ReferencedSOPClassUID == CT_IMAGE
    assert ds.FailedSOPSequence[0].FailureReason == STATUS_CANNOT_UNDERSTAND
