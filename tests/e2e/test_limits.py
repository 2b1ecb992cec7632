"""Configured limits, exceeded on a running archive: each gets its precise error, and
the archive keeps serving (issue 5). The DIMSE ones (maximum PDU, association
refusals) are in test_dimse.py and test_tenants.py."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests import factory
from tests.e2e.conftest import DICOM_JSON, Archive, running_archive, stow_body, wait_for_instances

pytestmark = pytest.mark.e2e
MAX_STOW = 400_000
MAX_INSTANCE = 150_000


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    env = {
        "DICOMCLOUD_MAX_STOW_BYTES": str(MAX_STOW),
        "DICOMCLOUD_MAX_INSTANCE_BYTES": str(MAX_INSTANCE),
        "DICOMCLOUD_QIDO_MAX_LIMIT": "50",
        "DICOMCLOUD_HTTP_BODY_TIMEOUT": "1",
    }
    with running_archive(tmp_path_factory.mktemp("limits"), env) as archive:
        yield archive


def multipart(*datasets: bytes) -> tuple[bytes, dict[str, str]]:
    body, content_type = stow_body(*datasets)
    return body, {"Content-Type": content_type, "Accept": DICOM_JSON}


_numbers = iter(range(1, 10_000))


def instance(pixels: int, patient: str) -> tuple[str, bytes]:
    side = int(pixels**0.5)
    ds = factory.make_instance(PatientID=patient, InstanceNumber=next(_numbers), rows=side, columns=side)
    return str(ds.SOPInstanceUID), factory.part10_bytes(ds)


def test_stow_body_over_the_limit_is_413(limited: Archive) -> None:
    parts = [instance(120 * 120, "LIMIT-BODY")[1] for _ in range(32)]  # 32 x ~29 KiB
    body, headers = multipart(*parts)
    assert len(body) > MAX_STOW
    with limited.http() as http:
        r = http.post(f"{limited.url}/studies", content=body, headers=headers)
        assert r.status_code == 413 and str(MAX_STOW) in r.text, r.text
        # chunked, without Content-Length: cut off once past the limit
        r = http.post(
            f"{limited.url}/studies",
            content=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]),
            headers=headers,
        )
        assert r.status_code == 413, r.text
        assert httpx.get(f"{limited.url}/studies", params={"PatientID": "LIMIT-BODY"}).status_code == 204


def test_a_part_over_the_instance_limit_fails_alone(limited: Archive) -> None:
    small_uid, small = instance(32 * 32, "LIMIT-PART")
    big_uid, big = instance(300 * 300, "LIMIT-PART")  # 180 KB of pixels
    assert len(big) > MAX_INSTANCE
    body, headers = multipart(small, big)
    with limited.http() as http:
        r = http.post(f"{limited.url}/studies", content=body, headers=headers)
        assert r.status_code == 202, r.text
        answer = r.json()
        failed = answer["00081198"]["Value"]
        assert len(failed) == 1 and failed[0]["00081197"]["Value"] == [0xA700]
        assert big_uid in str(failed[0])
        assert "exceeds" in r.headers["warning"]
        wait_for_instances(http, limited.url, [small_uid])
        r = http.get(f"{limited.url}/instances", params={"SOPInstanceUID": big_uid})
        assert r.status_code == 204, r.text[:500]


def test_qido_limit_over_the_maximum_is_400(limited: Archive) -> None:
    with limited.http() as http:
        r = http.get(f"{limited.url}/studies", params={"limit": "51"})
        assert r.status_code == 400 and "50" in r.text, r.text
        assert http.get(f"{limited.url}/studies", params={"limit": "50"}).status_code in (200, 204)


def test_a_stalled_request_body_gets_408_and_frees_the_worker(limited: Archive) -> None:
    body, headers = multipart(instance(32 * 32, "LIMIT-STALL")[1])
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:{limited.http_port}\r\n"
        f"Content-Type: {headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", limited.http_port), timeout=15) as s:
        s.sendall(head + body[:100])  # ... and then nothing more
        answer = s.recv(65536)
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"stalled" in answer
    assert waited < 10, waited
    with limited.http() as http:
        assert http.get(f"{limited.url}/studies", params={"PatientID": "LIMIT-STALL"}).status_code == 204


def test_c_store_over_the_instance_limit_is_refused_with_a_status(limited: Archive) -> None:
    ae = AE(ae_title="LIMITS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", limited.dimse_port, ae_title=limited.ae_title)
    assert assoc.is_established
    try:
        ds = factory.make_instance(PatientID="LIMIT-DIMSE", InstanceNumber=1, rows=300, columns=300)
        status = assoc.send_c_store(ds)
        assert status.Status == 0xA700, status
        assert "exceeds" in str(status.get("ErrorComment", ""))
        small = factory.make_instance(PatientID="LIMIT-DIMSE", InstanceNumber=2, rows=32, columns=32)
        assert assoc.send_c_store(small).Status == 0x0000
    finally:
        assoc.release()
