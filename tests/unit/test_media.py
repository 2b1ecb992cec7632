"""Accept negotiation for WADO-RS (PS3.18 §8.7.3, §8.7.5, §10.4)."""

from __future__ import annotations

import pytest

from dicomcloud.domain.codecs import PixelDescription
from dicomcloud.domain.media import (
    APPLICATION_DICOM_JSON,
    APPLICATION_JSON,
    FRAME_MEDIA_TYPES,
    choose_frame_media,
    choose_instance_media,
    choose_metadata_media,
    parse_accept,
    stored_frame_media,
    transcoding_available,
)
from dicomcloud.errors import InvalidInput, NotAcceptable

EVRLE = "1.2.840.10008.1.2.1"
IVRLE = "1.2.840.10008.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K = "1.2.840.10008.1.2.4.90"
HTJ2K = "1.2.840.10008.1.2.4.201"
MPEG4 = "1.2.840.10008.1.2.4.102"
JPEG_XL = "1.2.840.10008.1.2.4.110"

CT = PixelDescription(512, 512, bits_allocated=16, bits_stored=12)  # 12-bit CT in 16 bits
GRAY8 = PixelDescription(64, 64, bits_allocated=8, bits_stored=8)


def _never() -> PixelDescription:
    raise AssertionError("the pixel description was read although the stored syntax fits")


def test_parse_accept_orders_by_q_and_drops_zero() -> None:
    ranges = parse_accept(
        'application/json;q=0.5, multipart/related; type="application/dicom"; q=0.9, text/html;q=0, */*;q=0.1'
    )
    assert [r.media_type.essence for r in ranges] == [
        "multipart/related",
        "application/json",
        "*/*",
    ]
    assert "q" not in ranges[0].media_type.params
    assert ranges[0].media_type.param("type") == "application/dicom"


def test_parse_accept_default_and_errors() -> None:
    assert [r.media_type.essence for r in parse_accept(None)] == ["*/*"]
    assert [r.media_type.essence for r in parse_accept("*")] == ["*/*"]
    with pytest.raises(InvalidInput, match="not a number"):
        parse_accept("a/b;q=high")
    with pytest.raises(InvalidInput, match="between 0 and 1"):
        parse_accept("a/b;q=2")


def test_parse_accept_keeps_commas_inside_quotes() -> None:
    (only,) = parse_accept('multipart/related; type="a/b, c"')
    assert only.media_type.param("type") == "a/b, c"


# --- instances --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "stored"),
    [
        ('multipart/related; type="application/dicom"; transfer-syntax=*', JPEG_LS),
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS}', JPEG_LS),
        (f'multipart/related; type="application/dicom"; transfer-syntax={EVRLE}, */*; q=0.5', EVRLE),
    ],
)
def test_instances_as_stored(accept: str, stored: str) -> None:
    choice = choose_instance_media(accept, single_part_allowed=False)
    assert choice.multipart
    assert choice.as_stored(stored)
    assert choice.part_content_type(stored, _never) == f"application/dicom; transfer-syntax={stored}"


@pytest.mark.parametrize("accept", [None, "*/*", 'multipart/related; type="application/dicom"', "multipart/related"])
def test_default_instance_syntax_is_explicit_vr_little_endian(accept: str | None) -> None:
    """PS3.18 §8.7.3.4 / Table 8.7.3-2: no transfer-syntax parameter means Explicit VR LE."""
    choice = choose_instance_media(accept, single_part_allowed=False)
    assert choice.transfer_syntaxes == (None,)
    assert choice.as_stored(EVRLE)
    assert not choice.as_stored(JPEG_LS)
    assert choice.part_content_type(JPEG_LS, CT) == f"application/dicom; transfer-syntax={EVRLE}"
    assert choice.transfer_syntax_for(IVRLE, CT) == EVRLE  # Implicit VR is not for web services
    assert choice.transfer_syntax_for(JPEG_LS, None) == EVRLE  # no Pixel Data: re-encoded data set only


def test_default_falls_back_to_the_stored_syntax_when_it_cannot_be_decoded() -> None:
    """Video and syntaxes without a decoder here go as stored, labelled (§8.7.3.4 Note 2)."""
    choice = choose_instance_media(None, single_part_allowed=True)
    assert choice.transfer_syntax_for(MPEG4, CT) == MPEG4
    assert choice.transfer_syntax_for(JPEG_XL, CT) == JPEG_XL
    huge = PixelDescription(
        4096, 4096, samples_per_pixel=3, bits_allocated=16, photometric_interpretation="RGB", number_of_frames=64
    )
    assert choice.transfer_syntax_for(J2K, huge) == J2K  # > 4 GiB decoded


def test_instance_single_part() -> None:
    choice = choose_instance_media("application/dicom", single_part_allowed=True)
    assert not choice.multipart
    assert choice.transfer_syntax_for(IVRLE, CT) == EVRLE
    star = choose_instance_media("application/dicom; transfer-syntax=*", single_part_allowed=True)
    assert star.transfer_syntax_for(IVRLE, _never) == IVRLE


def test_single_part_refused_for_a_series() -> None:
    with pytest.raises(NotAcceptable, match="multipart/related"):
        choose_instance_media("application/dicom", single_part_allowed=False)


def test_other_syntax_is_transcoded_when_the_codecs_allow() -> None:
    choice = choose_instance_media(
        f'multipart/related; type="application/dicom"; transfer-syntax={EVRLE}',
        single_part_allowed=False,
    )
    assert choice.part_content_type(JPEG_LS, CT).endswith(EVRLE)
    assert choice.part_content_type(EVRLE, _never).endswith(EVRLE)
    assert transcoding_available(JPEG_LS, HTJ2K, CT)
    baseline = choose_instance_media(
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}',
        single_part_allowed=False,
    )
    assert baseline.transfer_syntax_for(EVRLE, GRAY8) == JPEG_BASELINE
    with pytest.raises(NotAcceptable, match=r"JPEG Baseline .* 8-bit samples only; this instance has BitsStored 12"):
        baseline.transfer_syntax_for(JPEG_LS, CT)
    with pytest.raises(NotAcceptable, match="shall not be used with DICOM web services"):
        choose_instance_media(
            f"application/dicom; transfer-syntax={IVRLE}", single_part_allowed=True
        ).transfer_syntax_for(EVRLE, CT)
    with pytest.raises(NotAcceptable, match=r"no decoder for .*1\.2\.840\.10008\.1\.2\.4\.102"):
        choose_instance_media(
            f"application/dicom; transfer-syntax={EVRLE}", single_part_allowed=True
        ).transfer_syntax_for(MPEG4, CT)


def test_fallback_syntax_in_preference_order() -> None:
    choice = choose_instance_media(
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}, '
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5',
        single_part_allowed=False,
    )
    assert choice.transfer_syntaxes == (JPEG_BASELINE, "*")
    assert choice.transfer_syntax_for(JPEG_LS, CT) == JPEG_LS  # baseline impossible for 12 bits: as stored
    assert choice.transfer_syntax_for(EVRLE, GRAY8) == JPEG_BASELINE
    ordered = choose_instance_media(
        f'multipart/related; type="application/dicom"; transfer-syntax={J2K}; q=0.9, '
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS}',
        single_part_allowed=False,
    )
    assert ordered.transfer_syntaxes == (JPEG_LS, J2K)
    assert ordered.transfer_syntax_for(EVRLE, CT) == JPEG_LS
    assert ordered.transfer_syntax_for(J2K, CT) == JPEG_LS


def test_instances_not_acceptable() -> None:
    with pytest.raises(NotAcceptable, match="image/png"):
        choose_instance_media("image/png", single_part_allowed=True)
    with pytest.raises(NotAcceptable):
        choose_instance_media('multipart/related; type="application/dicom+xml"', single_part_allowed=False)


# --- frames -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("syntax", "media_type"),
    [
        (IVRLE, "application/octet-stream"),
        ("1.2.840.10008.1.2.2", "application/octet-stream"),
        ("1.2.840.10008.1.2.1.99", "application/octet-stream"),
        ("1.2.840.10008.1.2.1.98", "application/octet-stream"),
        ("1.2.840.10008.1.2.8.1", "application/octet-stream"),
        (JPEG_BASELINE, "image/jpeg"),
        ("1.2.840.10008.1.2.4.51", "image/jpeg"),
        ("1.2.840.10008.1.2.4.57", "image/jpeg"),
        ("1.2.840.10008.1.2.4.70", "image/jpeg"),
        (JPEG_LS, "image/jls"),
        ("1.2.840.10008.1.2.4.81", "image/jls"),
        ("1.2.840.10008.1.2.4.90", "image/jp2"),
        ("1.2.840.10008.1.2.4.91", "image/jp2"),
        ("1.2.840.10008.1.2.4.92", "image/jpx"),
        ("1.2.840.10008.1.2.4.93", "image/jpx"),
        (HTJ2K, "image/jphc"),
        ("1.2.840.10008.1.2.4.202", "image/jphc"),
        ("1.2.840.10008.1.2.4.203", "image/jphc"),
        ("1.2.840.10008.1.2.5", "image/dicom-rle"),
        ("1.2.840.10008.1.2.4.110", "image/jxl"),
        ("1.2.840.10008.1.2.4.111", "image/jxl"),
        ("1.2.840.10008.1.2.4.112", "image/jxl"),
        ("1.2.840.10008.1.2.4.53", "application/octet-stream"),  # retired, not in the tables
    ],
)
def test_frames_as_stored_with_transfer_syntax_star(syntax: str, media_type: str) -> None:
    choice = choose_frame_media("multipart/related; type=application/octet-stream; transfer-syntax=*", syntax)
    expected_syntax = EVRLE if syntax in (IVRLE, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99") else syntax
    assert (choice.media_type, choice.transfer_syntax_uid) == (media_type, expected_syntax)
    assert choice.part_content_type == f"{media_type}; transfer-syntax={expected_syntax}"
    assert stored_frame_media(syntax) == (media_type, expected_syntax)


def test_video_media_types() -> None:
    assert FRAME_MEDIA_TYPES["1.2.840.10008.1.2.4.100"] == "video/mpeg"
    assert FRAME_MEDIA_TYPES[MPEG4] == "video/mp4"
    assert FRAME_MEDIA_TYPES["1.2.840.10008.1.2.4.107"] == "video/H265"
    with pytest.raises(NotAcceptable, match="video"):
        choose_frame_media("*/*", MPEG4)


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        'multipart/related; type="*/*"',  # dicomweb-client's default
        'multipart/related; type="image/jls"',
        f'multipart/related; type="image/jls"; transfer-syntax={JPEG_LS}',
        'multipart/related; type="image/*"',
        f'multipart/related; type="application/octet-stream"; transfer-syntax={EVRLE}, '
        'multipart/related; type="image/jls"; q=0.5',
    ],
)
def test_frames_accept_forms_for_jpeg_ls(accept: str | None) -> None:
    choice = choose_frame_media(accept, JPEG_LS)
    assert choice.part_content_type == f"image/jls; transfer-syntax={JPEG_LS}"
    assert choice.multipart


def test_native_frames_default_octet_stream() -> None:
    choice = choose_frame_media('multipart/related; type="application/octet-stream"', IVRLE)
    assert choice.part_content_type == f"application/octet-stream; transfer-syntax={EVRLE}"


def test_compressed_frames_as_octet_stream_are_decoded() -> None:
    """application/octet-stream without a syntax is Explicit VR Little Endian (Table 8.7.3-4)."""
    choice = choose_frame_media('multipart/related; type="application/octet-stream"', HTJ2K, pixels=CT)
    assert choice.part_content_type == f"application/octet-stream; transfer-syntax={EVRLE}"
    single = choose_frame_media("application/octet-stream", JPEG_LS, single_part_allowed=True, pixels=CT)
    assert (single.multipart, single.transfer_syntax_uid) == (False, EVRLE)
    with pytest.raises(NotAcceptable, match=r"transcoding from .*\(1.2.840.10008.1.2.4.201\) to .* is not available"):
        choose_frame_media('multipart/related; type="application/octet-stream"', HTJ2K)  # no pixel description
    with pytest.raises(NotAcceptable, match="8-bit samples only"):
        choose_frame_media(f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}', JPEG_LS, pixels=CT)


@pytest.mark.parametrize(
    ("part_type", "stored", "sent"),
    [
        ("image/jls", EVRLE, JPEG_LS),  # the media type's default syntax (Table 8.7.3-5)
        ("image/jls", IVRLE, JPEG_LS),
        ("image/jpeg", JPEG_LS, JPEG_SV1),
        ("image/jp2", JPEG_LS, J2K),
        ("image/jphc", EVRLE, HTJ2K),
        ("image/dicom-rle", J2K, "1.2.840.10008.1.2.5"),
        ("image/jpeg", JPEG_BASELINE, JPEG_BASELINE),  # stored in that media type: as stored
    ],
)
def test_frames_in_a_part_type_get_its_default_syntax(part_type: str, stored: str, sent: str) -> None:
    choice = choose_frame_media(f'multipart/related; type="{part_type}"', stored, pixels=CT)
    assert choice.part_content_type == f"{part_type}; transfer-syntax={sent}"


def test_frames_pixel_description_read_only_when_needed() -> None:
    choice = choose_frame_media(
        f'multipart/related; type="image/jls"; transfer-syntax={JPEG_LS}', JPEG_LS, pixels=_never
    )
    assert choice.transfer_syntax_uid == JPEG_LS
    calls: list[int] = []

    def counted() -> PixelDescription:
        calls.append(1)
        return CT

    choose_frame_media(
        f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}, '
        f'multipart/related; type="image/jp2"; transfer-syntax={J2K}; q=0.5',
        JPEG_LS,
        pixels=counted,
    )
    assert calls == [1]


def test_frames_not_acceptable_without_a_syntax_question() -> None:
    with pytest.raises(NotAcceptable, match="image/jls"):
        choose_frame_media('multipart/related; type="image/jp2"', JPEG_LS)


def test_single_part_frame() -> None:
    choice = choose_frame_media("image/jls", JPEG_LS, single_part_allowed=True)
    assert not choice.multipart
    with pytest.raises(NotAcceptable):
        choose_frame_media("image/jls", JPEG_LS, single_part_allowed=False)


# --- metadata -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, APPLICATION_DICOM_JSON),
        ("*/*", APPLICATION_DICOM_JSON),
        ("application/dicom+json", APPLICATION_DICOM_JSON),
        ("application/json", APPLICATION_JSON),
        ("application/*", APPLICATION_DICOM_JSON),
        ("application/json;q=0.5, application/dicom+json", APPLICATION_DICOM_JSON),
    ],
)
def test_metadata(accept: str | None, chosen: str) -> None:
    assert choose_metadata_media(accept) == chosen


def test_metadata_xml_not_acceptable() -> None:
    with pytest.raises(NotAcceptable, match="application/dicom\\+json"):
        choose_metadata_media('multipart/related; type="application/dicom+xml"')
