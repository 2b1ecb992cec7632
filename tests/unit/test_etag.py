"""Entity-tags of metadata answers and If-None-Match (RFC 9110 §8.8.3, §13.1.2)."""

from __future__ import annotations

import gzip

import pytest

from dicomcloud.entrypoints.http.wado import metadata_etag, none_match

TAG = 'W/"0123abcd"'


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ("*", True),
        (" * ", True),
        (TAG, True),
        ('"0123abcd"', True),  # weak comparison: W/ does not matter
        ('"x", W/"0123abcd"', True),
        ('W/"0123abc"', False),
        ('"0123abcd0"', False),
        ('"a,b", "c"', False),
        ('"a,"0123abcd"', False),  # malformed: no tag is ours
        ("0123abcd", False),  # not quoted: not an entity-tag
    ],
)
def test_if_none_match_by_weak_comparison(header: str | None, matches: bool) -> None:
    assert none_match(header, TAG) is matches


def test_metadata_etag_depends_on_content_and_base_only() -> None:
    gz = gzip.compress(b'[{"a":1}]', 1, mtime=0)
    tag = metadata_etag(gz, "http://a/dicom-web")
    assert tag.startswith('W/"') and tag.endswith('"')
    assert metadata_etag(bytes(gz), "http://a/dicom-web") == tag  # any process, any time
    assert metadata_etag(gz, "http://b/dicom-web") != tag
    assert metadata_etag(gzip.compress(b'[{"a":2}]', 1, mtime=0), "http://a/dicom-web") != tag
