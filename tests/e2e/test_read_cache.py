"""Conditional metadata requests (RFC 9110 §8.8.3, §13.1.2) against ``dicomcloud up``.

Run with the in-process cache and, when ``DICOMCLOUD_TEST_REDIS`` names a
server, with ``--redis-url`` (a key prefix of the test's own). Instances go in
with dicomweb-client's STOW-RS; the tags, the 304s and the metadata are read
with plain httpx.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest
from pydicom.dataset import Dataset
from redis import Redis

from dicomcloud.adapters.redis_cache import split_prefix
from tests import factory
from tests.e2e.conftest import DICOM_JSON, Archive, wait_for_instances
from tests.redis_server import needs_redis, test_redis_url

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["in-process", pytest.param("redis", marks=needs_redis)])
def redis_url(request: pytest.FixtureRequest) -> str:
    return test_redis_url() if request.param == "redis" else ""


@pytest.fixture
def archive(redis_url: str, start_archive: Callable[..., Archive]) -> Archive:
    return start_archive(args=["--redis-url", redis_url] if redis_url else [])


def cached_answers(redis_url: str) -> int:
    """How many metadata answers the archive keeps in Redis."""
    plain, prefix = split_prefix(redis_url)
    with Redis.from_url(plain) as client:
        return sum(1 for _ in client.scan_iter(match=f"{prefix}dc:*:md:*"))


def store(archive: Archive, datasets: list[Dataset]) -> None:
    response = archive.client().store_instances(datasets)
    assert "FailedSOPSequence" not in response
    with archive.http() as http:
        wait_for_instances(http, archive.url, [ds.SOPInstanceUID for ds in datasets])


def get(http: httpx.Client, path: str, **headers: str) -> httpx.Response:
    return http.get(path, headers={"Accept": DICOM_JSON, **headers})


def test_metadata_etag_and_not_modified(archive: Archive, redis_url: str) -> None:
    patient = f"ETAG{uuid.uuid4().hex[:6]}"
    series = factory.make_series(2, PatientID=patient, rows=16, columns=16)
    store(archive, series)
    study, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    paths = [f"/dicom-web/studies/{study}/series/{series_uid}/metadata", f"/dicom-web/studies/{study}/metadata"]
    with archive.http() as http:
        tags = []
        for path in paths:
            first = get(http, path)
            assert first.status_code == 200, first.text[:300]
            etag = first.headers["etag"]
            assert etag.startswith('W/"') and etag.endswith('"')
            assert first.headers["cache-control"] == "no-cache"
            assert len(first.json()) == 2
            assert get(http, path).headers["etag"] == etag  # again (warm): the same tag

            not_modified = get(http, path, **{"If-None-Match": etag})
            assert not_modified.status_code == 304
            assert not_modified.content == b""
            assert not_modified.headers["etag"] == etag

            identity = get(http, path, **{"Accept-Encoding": "identity"})
            assert "content-encoding" not in identity.headers
            assert identity.headers["etag"] == etag  # weak: one tag for both encodings
            assert identity.json() == first.json()

            assert get(http, path, **{"If-None-Match": f'"other", {etag.removeprefix("W/")}'}).status_code == 304
            assert get(http, path, **{"If-None-Match": "*"}).status_code == 304
            other = get(http, path, **{"If-None-Match": 'W/"0123", "abcd"'})
            assert other.status_code == 200 and other.json() == first.json()
            tags.append(etag)
        if redis_url:
            assert cached_answers(redis_url) == 2  # the series' and the study's

        # A new instance of the series: both answers change, and so do their tags.
        third = factory.make_instance(PatientID=patient, InstanceNumber=3, rows=16, columns=16)
        store(archive, [third])
        for path, etag in zip(paths, tags, strict=True):
            changed = get(http, path, **{"If-None-Match": etag})
            assert changed.status_code == 200
            assert changed.headers["etag"] != etag
            assert len(changed.json()) == 3

        instance = f"/dicom-web/studies/{study}/series/{series_uid}/instances/{third.SOPInstanceUID}/metadata"
        first = get(http, instance)
        assert first.status_code == 200 and len(first.json()) == 1
        not_modified = get(http, instance, **{"If-None-Match": first.headers["etag"]})
        assert not_modified.status_code == 304 and not_modified.headers["etag"] == first.headers["etag"]


def test_unknown_series_metadata_is_404_not_cached(archive: Archive) -> None:
    patient = f"NF{uuid.uuid4().hex[:6]}"
    series = factory.make_series(1, PatientID=patient, rows=16, columns=16)
    study, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    path = f"/dicom-web/studies/{study}/series/{series_uid}/metadata"
    with archive.http() as http:
        assert get(http, path).status_code == 404
        assert get(http, path, **{"If-None-Match": "*"}).status_code == 404  # nothing to match
        store(archive, series)
        assert get(http, path).status_code == 200
