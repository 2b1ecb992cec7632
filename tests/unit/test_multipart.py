"""multipart/related parsing and encoding (RFC 2046 §5.1, RFC 2387, PS3.18 §8.6.1.2)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomcloud.domain.multipart import (
    Part,
    encode_multipart_related,
    multipart_related_type,
    new_boundary,
    parse_content_type,
    parse_media_type,
    parse_multipart_related,
)
from dicomcloud.errors import InvalidInput, UnsupportedMediaType

CT = 'multipart/related; type="application/dicom"; boundary=XyZ'


def _body(*chunks: bytes) -> bytes:
    return b"".join(chunks)


def test_media_type_parameters_quoted_and_case_insensitive() -> None:
    media = parse_media_type(
        'Multipart/Related; TYPE="application/dicom"; Boundary="a;b,c"; transfer-syntax=*'
    )
    assert media.essence == "multipart/related"
    assert media.param("type") == "application/dicom"
    assert media.param("boundary") == "a;b,c"
    assert media.params["transfer-syntax"] == "*"


def test_media_type_quoted_escapes_and_str_round_trip() -> None:
    media = parse_media_type(r'a/b; x="say \"hi\""; y=plain')
    assert media.param("x") == 'say "hi"'
    assert parse_media_type(str(media)) == media


@pytest.mark.parametrize("bad", ["", "text", "a/", "/b", "a/b; novalue", "a b/c"])
def test_bad_media_types(bad: str) -> None:
    with pytest.raises(InvalidInput):
        parse_media_type(bad)


def test_content_type_missing_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType, match="no Content-Type"):
        parse_content_type(None)
    with pytest.raises(UnsupportedMediaType):
        parse_content_type("nonsense")


def test_parse_with_preamble_padding_and_epilogue() -> None:
    body = _body(
        b"this is a preamble\r\n",
        b"--XyZ  \t\r\n",
        b"Content-Type: application/dicom\r\nContent-Location: a\r\n\r\n",
        b"one\r\n--XyZnot-a-delimiter\r\n",
        b"\r\n--XyZ\r\n",
        b"\r\n",  # a part without headers
        b"two",
        b"\r\n--XyZ--  \r\nthe epilogue --XyZ\r\n",
    )
    parts = parse_multipart_related(body, CT)
    assert len(parts) == 2
    assert parts[0].headers == {"content-type": "application/dicom", "content-location": "a"}
    assert bytes(parts[0].content) == b"one\r\n--XyZnot-a-delimiter\r\n"
    assert isinstance(parts[0].content, memoryview)
    assert parts[1].headers == {}
    assert bytes(parts[1].content) == b"two"


def test_folded_and_repeated_headers() -> None:
    body = b"--XyZ\r\nX-A: 1\r\n  continued\r\nX-A: 2\r\n\r\nc\r\n--XyZ--"
    (part,) = parse_multipart_related(body, CT)
    assert part.headers["x-a"] == "1 continued, 2"


def test_empty_multipart() -> None:
    assert parse_multipart_related(b"--XyZ--\r\n", CT) == []


def test_missing_boundary_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType, match="no boundary"):
        parse_multipart_related(b"--XyZ--", 'multipart/related; type="application/dicom"')


def test_not_multipart_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType, match="not a multipart"):
        parse_multipart_related(b"", "application/dicom")


def test_wrong_boundary() -> None:
    with pytest.raises(InvalidInput, match="no delimiter line --Other"):
        parse_multipart_related(b"--XyZ\r\n\r\nx\r\n--XyZ--", "multipart/related; boundary=Other")


def test_truncated_body_without_close_delimiter() -> None:
    with pytest.raises(InvalidInput, match="truncated"):
        parse_multipart_related(b"--XyZ\r\nContent-Type: a/b\r\n\r\npartial data", CT)


def test_truncated_inside_headers() -> None:
    with pytest.raises(InvalidInput, match="inside its headers"):
        parse_multipart_related(b"--XyZ\r\nContent-Type: a/b", CT)


def test_malformed_header_line() -> None:
    with pytest.raises(InvalidInput, match="malformed header"):
        parse_multipart_related(b"--XyZ\r\nno colon here\r\n\r\nx\r\n--XyZ--", CT)


def test_boundary_too_long() -> None:
    with pytest.raises(InvalidInput, match="70"):
        parse_multipart_related(b"", "multipart/related; boundary=" + "a" * 71)


def test_memoryview_input() -> None:
    body = memoryview(b"--XyZ\r\n\r\nabc\r\n--XyZ--")
    (part,) = parse_multipart_related(body, CT)
    assert bytes(part.content) == b"abc"


def test_encode_layout_and_response_type() -> None:
    body = b"".join(
        encode_multipart_related(
            [Part.of("application/dicom", b"x", content_location="http://h/a")], "B"
        )
    )
    assert body == (
        b"--B\r\nContent-Type: application/dicom\r\nContent-Location: http://h/a\r\n\r\n"
        b"x\r\n--B--\r\n"
    )
    assert multipart_related_type("application/dicom", "B") == (
        'multipart/related; type="application/dicom"; boundary=B'
    )
    assert b"".join(encode_multipart_related([], "B")) == b"--B--\r\n"


def test_encode_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        list(encode_multipart_related([Part.of("a/b\r\nX: y", b"")], "B"))


def test_new_boundary_is_valid_and_fresh() -> None:
    a, b = new_boundary(), new_boundary()
    assert a != b
    assert len(a) <= 70
    assert (
        parse_multipart_related(b"--" + a.encode() + b"--", f"multipart/related; boundary={a}")
        == []
    )


_header_values = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30
).map(str.strip)


@settings(max_examples=200, deadline=None)
@given(
    contents=st.lists(
        st.binary(max_size=200)
        | st.sampled_from([b"", b"\r\n", b"--", b"\r\n--", b"--b--", b"\r\n\r\n"]),
        max_size=6,
    ),
    location=_header_values,
)
def test_round_trip(contents: list[bytes], location: str) -> None:
    boundary = new_boundary()
    parts = [Part.of("application/dicom", c, content_location=location) for c in contents]
    body = b"".join(bytes(chunk) for chunk in encode_multipart_related(parts, boundary))
    parsed = parse_multipart_related(body, multipart_related_type("application/dicom", boundary))
    assert [bytes(p.content) for p in parsed] == contents
    assert all(
        p.headers == {"content-type": "application/dicom", "content-location": location}
        for p in parsed
    )


def test_fast_for_500_parts_of_512_kib() -> None:
    boundary = new_boundary()
    payload = bytes(range(256)) * 2048  # 512 KiB
    parts = [Part.of("application/dicom", payload) for _ in range(500)]
    body = b"".join(bytes(c) for c in encode_multipart_related(parts, boundary))
    started = time.perf_counter()
    parsed = parse_multipart_related(body, f"multipart/related; boundary={boundary}")
    elapsed = time.perf_counter() - started
    assert len(parsed) == 500
    assert bytes(parsed[-1].content) == payload
    assert elapsed < 1.0, f"parsing 256 MiB took {elapsed:.3f} s"


def test_leading_crlf_and_no_trailing_crlf() -> None:
    # The shape dicomweb-client sends: CRLF before the first delimiter, none after the last.
    body = b"\r\n--XyZ\r\nContent-Type: application/dicom\r\n\r\nabc\r\n--XyZ--"
    (part,) = parse_multipart_related(body, CT)
    assert bytes(part.content) == b"abc"
    assert part.content_type == "application/dicom"
