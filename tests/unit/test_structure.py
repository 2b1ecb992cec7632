"""Ingest refuses what the indexer could not read, and nothing valid (``domain/structure.py``).

Every instance that ingest acknowledges must become searchable: the damage the
fuzzing found after (0020,000E) SeriesInstanceUID — where filing stops decoding —
is refused with a reason naming the element, and the indexer reads everything
ingest accepts (``usecases/index_instances.py``, tolerant of values that do not convert).
"""

from __future__ import annotations

import re
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
)

from dicomcloud import errors
from dicomcloud.domain import part10
from dicomcloud.domain.part10 import file_meta, parse_dataset, parse_part10
from dicomcloud.usecases.index_instances import HEAD_BYTES, read_instance
from tests import factory

UNDEFINED = 0xFFFFFFFF
ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_LONG = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


# --- building data sets byte by byte ------------------------------------------------


def element(tag: int, vr: bytes, value: bytes, *, length: int | None = None, implicit: bool = False) -> bytes:
    """One element, little endian; ``length`` overrides the length field."""
    n = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", n) + value
    if vr in _LONG:
        return head + vr + b"\x00\x00" + struct.pack("<I", n) + value
    return head + vr + struct.pack("<H", n) + value


def item(content: bytes, *, defined: bool = True) -> bytes:
    if defined:
        return struct.pack("<HHI", 0xFFFE, 0xE000, len(content)) + content
    return struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + content + ITEM_END


def sequence(tag: int, items: list[bytes], *, defined: bool = True, implicit: bool = False) -> bytes:
    body = b"".join(items)
    if defined:
        return element(tag, b"SQ", body, implicit=implicit)
    return element(tag, b"SQ", body + SEQUENCE_END, length=UNDEFINED, implicit=implicit)


def instance(syntax: str = ExplicitVRLittleEndian, **extra: object) -> Dataset:
    return factory.make_instance(rows=8, columns=8, transfer_syntax=syntax, **extra)  # type: ignore[arg-type]


def dataset_of(ds: Dataset) -> bytes:
    return factory.dataset_bytes(factory.part10_bytes(ds))


def top_level(data: bytes, implicit: bool = False) -> dict[int, tuple[int, int, int]]:
    """(element start, value start, end) of each top-level element of a data set without
    undefined lengths (what the factory writes when no sequence is asked for)."""
    out = {}
    pos = 0
    while pos + 8 <= len(data):
        group, elem = struct.unpack("<HH", data[pos : pos + 4])
        if implicit:
            header, length = 8, struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        elif data[pos + 4 : pos + 6] in _LONG:
            header, length = 12, struct.unpack("<I", data[pos + 8 : pos + 12])[0]
        else:
            header, length = 8, struct.unpack("<H", data[pos + 6 : pos + 8])[0]
        assert length != UNDEFINED
        out[group << 16 | elem] = (pos, pos + header, pos + header + length)
        pos += header + length
    return out


def insert_before(data: bytes, tag: int, extra: bytes, implicit: bool = False) -> bytes:
    at = top_level(data, implicit)[tag][0]
    return data[:at] + extra + data[at:]


def replace(data: bytes, tag: int, new: bytes, implicit: bool = False) -> bytes:
    start, _, end = top_level(data, implicit)[tag]
    return data[:start] + new + data[end:]


def file_with(dataset: bytes, syntax: str) -> bytes:
    """A Part 10 file around ``dataset`` (STOW-RS), File Meta Information as storescp writes it."""
    return file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", syntax) + dataset


PIXEL_DATA, ROWS, BITS_ALLOCATED, SAMPLES, STUDY_ID = 0x7FE00010, 0x00280010, 0x00280100, 0x00280002, 0x00200010


# --- valid input is accepted ----------------------------------------------------------


def _with_sequences() -> dict[str, object]:
    code = Dataset()
    code.CodeValue = "T-D0050"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "Tissue"
    request = Dataset()
    request.RequestedProcedureID = "RP1"
    request.ScheduledProtocolCodeSequence = Sequence([code])
    return {
        "RequestAttributesSequence": Sequence([request, Dataset()]),  # nested, and an empty item
        "ReferencedPerformedProcedureStepSequence": Sequence([]),  # empty
        "bulk_bytes": 1000,  # a private OB element
    }


@pytest.mark.parametrize("syntax", factory.ALL_SYNTAXES)
@pytest.mark.parametrize("frames", [1, 3])
def test_every_transfer_syntax_is_accepted_whole(syntax: str, frames: int) -> None:
    """Native, big endian, implicit, deflated, encapsulated (RLE, JPEG-LS, JPEG 2000, multi-frame),
    with nested sequences and items of undefined length (pydicom writes those)."""
    ds = factory.make_instance(
        rows=32, columns=32, number_of_frames=frames, transfer_syntax=syntax, **_with_sequences()
    )
    data = factory.part10_bytes(ds)
    key = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    stow = parse_part10(data, "t")
    assert (stow.key.study_instance_uid, stow.key.series_instance_uid, stow.key.sop_instance_uid) == key
    assert stow.transfer_syntax_uid == syntax
    dimse = parse_dataset(memoryview(factory.dataset_bytes(data)), syntax, "t")
    assert dimse.key == stow.key
    assert dimse.sop_class_uid == ds.SOPClassUID


def test_sequences_and_items_of_defined_and_undefined_length_are_accepted() -> None:
    """Hand-built: defined-length sequences and items, an undefined-length sequence in a
    defined-length item, an item in implicit VR inside an explicit VR sequence, UN of
    undefined length holding implicit VR items (PS3.5 §6.2.2), and a private sequence."""
    inner = sequence(0x00400008, [item(element(0x00080100, b"SH", b"T1"), defined=False)], defined=False)
    implicit_item = item(element(0x00400009, b"", b"SPS1", implicit=True))
    tail = b"".join(
        (
            sequence(0x00400275, [item(element(0x00401001, b"SH", b"RP") + inner), implicit_item]),
            element(0x00410010, b"LO", b"DICOMCLOUD TEST "),
            element(
                0x00411010, b"UN", item(element(0x00080100, b"", b"X1", implicit=True)) + SEQUENCE_END, length=UNDEFINED
            ),
            sequence(0x00411011, [item(b"", defined=False)], defined=False),  # private, explicit SQ
        )
    )
    data = insert_before(dataset_of(instance()), PIXEL_DATA, tail)
    assert parse_dataset(data, ExplicitVRLittleEndian, "t").key.sop_instance_uid
    assert parse_part10(file_with(data, ExplicitVRLittleEndian), "t").key.sop_instance_uid
    implicit = dataset_of(instance(ImplicitVRLittleEndian))
    private = element(
        0x00411010,
        b"",
        item(element(0x00080100, b"", b"X1", implicit=True)) + SEQUENCE_END,
        length=UNDEFINED,
        implicit=True,
    )
    assert parse_dataset(insert_before(implicit, PIXEL_DATA, private, True), ImplicitVRLittleEndian, "t")


PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_padded.dcm",
        "JPEG2000.dcm",
        "JPEG2000-embedded-sequence-delimiter.dcm",
        "JPEG-lossy.dcm",
        "SC_rgb_small_odd.dcm",
        "SC_rgb_small_odd_big_endian.dcm",
        "image_dfl.dcm",
        "rtplan.dcm",
        "rtdose.dcm",
        "test-SR.dcm",
        "reportsi.dcm",
        "waveform_ecg.dcm",
        "badVR.dcm",
    ],
)
def test_files_of_other_writers_are_accepted(name: str) -> None:
    """pydicom's own test files: other writers' habits (GDCM, DCMTK, odd lengths, padding)."""
    assert parse_part10((PYDICOM_FILES / name).read_bytes(), "t").key.sop_instance_uid


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MR_truncated.dcm", "(7FE0,0010) PixelData: length 8192 ends 62 bytes past the data set"),
        ("rtplan_truncated.dcm", "(300A,00B0) BeamSequence: length 976 ends 265 bytes past the data set"),
    ],
)
def test_truncated_files_of_other_writers_are_refused(name: str, reason: str) -> None:
    with pytest.raises(errors.MalformedDicom, match=_literal(reason)):
        parse_part10((PYDICOM_FILES / name).read_bytes(), "t")


def _literal(text: str) -> str:
    return re.escape(text)


# --- every class of damage is refused, with what is wrong --------------------------


def _explicit() -> bytes:
    return dataset_of(instance())


def _cut(tag: int, offset: int) -> Callable[[], bytes]:
    def damage() -> bytes:
        data = _explicit()
        return data[: top_level(data)[tag][0] + offset]

    return damage


def _length(tag: int, delta: int) -> Callable[[], bytes]:
    def damage() -> bytes:
        data = _explicit()
        start, value, _ = top_level(data)[tag]
        width = 4 if value - start == 12 else 2
        field = value - width
        new = int.from_bytes(data[field:value], "little") + delta
        return data[:field] + new.to_bytes(width, "little") + data[value:]

    return damage


def _odd_bits_allocated(implicit: bool) -> Callable[[], bytes]:
    def damage() -> bytes:
        data = dataset_of(instance(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian))
        return replace(
            data, BITS_ALLOCATED, element(BITS_ALLOCATED, b"US", b"\x10\x00\x00", implicit=implicit), implicit
        )

    return damage


def _vr(tag: int, vr: bytes) -> Callable[[], bytes]:
    def damage() -> bytes:
        data = _explicit()
        start = top_level(data)[tag][0]
        return data[: start + 4] + vr + data[start + 6 :]

    return damage


def _undefined_study_id() -> bytes:
    data = dataset_of(instance(ImplicitVRLittleEndian))
    _, value, _ = top_level(data, implicit=True)[STUDY_ID]
    return data[: value - 4] + struct.pack("<I", UNDEFINED) + data[value:]


def _unclosed(sequence_bytes: bytes) -> Callable[[], bytes]:
    return lambda: _explicit() + sequence_bytes


def _before_pixels(extra: bytes) -> Callable[[], bytes]:
    return lambda: insert_before(_explicit(), PIXEL_DATA, extra)


def _encapsulated(how: str) -> bytes:
    data = dataset_of(instance(JPEGLSLossless))
    if how == "open":
        assert data.endswith(SEQUENCE_END)
        return data[:-8]
    pixel = data.rfind(b"\xe0\x7f\x10\x00OB")
    first_fragment = pixel + 12 + 8 + struct.unpack("<I", data[pixel + 16 : pixel + 20])[0]  # after the offset table
    length = struct.unpack("<I", data[first_fragment + 4 : first_fragment + 8])[0]
    return data[: first_fragment + 4] + struct.pack("<I", length + 1000) + data[first_fragment + 8 :]


def _deep(levels: int) -> bytes:
    content = element(0x00080100, b"SH", b"T1")
    for _ in range(levels):
        content = sequence(0x00400275, [item(content)])
    return content


def _file_meta_in_dataset() -> bytes:
    data = _explicit()
    after_first = top_level(data)[0x00080005][2]
    return data[:after_first] + element(0x00020010, b"UI", b"1.2.840.10008.1.2\x00") + data[after_first:]


def _duplicate(tag: int) -> Callable[[], bytes]:
    def damage() -> bytes:
        data = _explicit()
        start, _, end = top_level(data)[tag]
        return insert_before(data, ROWS, data[start:end])

    return damage


EXPLICIT, IMPLICIT = ExplicitVRLittleEndian, ImplicitVRLittleEndian
DAMAGE: dict[str, tuple[Callable[[], bytes], str, str]] = {
    "truncated inside a value": (_cut(ROWS, 9), EXPLICIT, "(0028,0010) Rows: length 2 ends 1 byte past the data set"),
    "truncated inside a header": (_cut(ROWS, 5), EXPLICIT, "the data set ends 5 bytes into an element header"),
    "trailing byte": (lambda: _explicit() + b"\x00", EXPLICIT, "the data set ends 1 byte into an element header"),
    "length beyond the end": (_length(ROWS, 1000), EXPLICIT, "(0028,0010) Rows: length 1002 ends"),
    "Pixel Data beyond the end": (_length(PIXEL_DATA, 2), EXPLICIT, "(7FE0,0010) PixelData: length 130 ends 2 bytes"),
    "US of 3 bytes": (_odd_bits_allocated(False), EXPLICIT, "(0028,0100) BitsAllocated: length 3 is not a multiple"),
    "US of 3 bytes, implicit VR": (_odd_bits_allocated(True), IMPLICIT, "(0028,0100) BitsAllocated: length 3 is not"),
    "unknown VR": (_vr(SAMPLES, b"OO"), EXPLICIT, "(0028,0002) SamplesPerPixel: unknown VR 'OO'"),
    "wrong VR": (_vr(ROWS, b"UL"), EXPLICIT, "(0028,0010) Rows: length 2 is not a multiple of 4"),
    "undefined length on text": (_undefined_study_id, IMPLICIT, "(0020,0010) StudyID: undefined length, but not a"),
    "sequence never closes": (
        _unclosed(sequence(0xFFFAFFFA, [item(b"", defined=False)], defined=False)[:-8]),
        EXPLICIT,
        "(FFFA,FFFA) DigitalSignaturesSequence: the sequence does not end",
    ),
    "item never closes": (
        _unclosed(
            sequence(0xFFFAFFFA, [item(element(0x00080100, b"SH", b"T1"), defined=False)[:-8]], defined=False)[:-8]
        ),
        EXPLICIT,
        "an item of undefined length does not end",
    ),
    "sequence delimiter lost": (
        _before_pixels(sequence(0x00400275, [item(b"", defined=False)], defined=False)[:-8]),
        EXPLICIT,
        "(0040,0275) RequestAttributesSequence: (7FE0,0010) where an item must be",
    ),
    "item longer than its sequence": (
        _before_pixels(element(0x00400275, b"SQ", struct.pack("<HHI", 0xFFFE, 0xE000, 40) + b"\x00" * 8)),
        EXPLICIT,
        "(0040,0275) RequestAttributesSequence: item 1 runs 32 bytes past the end of the sequence",
    ),
    "stray item delimiter": (
        _before_pixels(ITEM_END),
        EXPLICIT,
        "(FFFE,E00D) ItemDelimitationItem outside what it delimits",
    ),
    "fragments never close": (
        lambda: _encapsulated("open"),
        JPEGLSLossless,
        "(7FE0,0010) PixelData: the fragments do not end",
    ),
    "fragment beyond the end": (
        lambda: _encapsulated("long"),
        JPEGLSLossless,
        "(7FE0,0010) PixelData: fragment 1 runs past the end",
    ),
    "sequences nested too deep": (_before_pixels(_deep(70)), EXPLICIT, "sequences nested deeper than 64"),
    "SOPInstanceUID after (0020,000E)": (
        _duplicate(0x00080018),
        EXPLICIT,
        "(0008,0018) SOPInstanceUID after elements beyond (0020,000E): out of order",
    ),
    "File Meta in the data set": (
        _file_meta_in_dataset,
        EXPLICIT,
        "(0002,0010) TransferSyntaxUID: a command or file meta",
    ),
}


@pytest.mark.parametrize("path", ["C-STORE", "STOW-RS"])
@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damage_is_refused_with_what_is_wrong(damage: tuple[Callable[[], bytes], str, str], path: str) -> None:
    make, syntax, reason = damage
    data = make()
    with pytest.raises(errors.MalformedDicom) as caught:
        if path == "C-STORE":
            parse_dataset(memoryview(data), syntax, "t")
        else:
            parse_part10(file_with(data, syntax), "t")
    assert reason in caught.value.reason
    assert errors.dimse_status(caught.value) == errors.STATUS_CANNOT_UNDERSTAND
    assert errors.http_status(caught.value) == 400
    if reason.startswith("("):  # the ErrorComment (64 characters) still names the element
        assert reason.split(" ", 1)[0] in caught.value.reason[:64]


def test_file_meta_leading_a_c_store_data_set_is_refused() -> None:
    """The indexer would read it as File Meta Information after ours: another transfer syntax."""
    data = element(0x00020010, b"UI", b"1.2.840.10008.1.2\x00") + _explicit()
    with pytest.raises(errors.MalformedDicom, match=r"^\(0002,0010\) TransferSyntaxUID: a command or file meta"):
        parse_dataset(data, ExplicitVRLittleEndian, "t")


def test_big_endian_damage_is_refused() -> None:
    data = dataset_of(instance(ExplicitVRBigEndian))
    with pytest.raises(errors.MalformedDicom, match=r"\(7FE0,0010\) PixelData: length 128 ends 1 byte past"):
        parse_dataset(data[:-1], ExplicitVRBigEndian, "t")


def test_deflated_damage_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    deflated = dataset_of(instance(DeflatedExplicitVRLittleEndian))
    with pytest.raises(errors.MalformedDicom, match="its deflate stream does not end"):
        parse_dataset(deflated[: len(deflated) - 20], DeflatedExplicitVRLittleEndian, "t")
    with pytest.raises(errors.MalformedDicom, match="does not inflate"):
        parse_dataset(b"\xff" * 64, DeflatedExplicitVRLittleEndian, "t")
    explicit = _explicit()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    damaged = compressor.compress(explicit[:-1]) + compressor.flush()  # a whole stream of a cut data set
    with pytest.raises(errors.MalformedDicom, match="PixelData: length 128 ends 1 byte past"):
        parse_dataset(damaged, DeflatedExplicitVRLittleEndian, "t")
    assert parse_dataset(deflated + b"\x00", DeflatedExplicitVRLittleEndian, "t")  # padding after the stream
    monkeypatch.setattr(part10, "MAX_INFLATED_BYTES", 100)
    with pytest.raises(errors.PayloadTooLarge, match="inflates to more than 100 bytes"):
        parse_dataset(deflated, DeflatedExplicitVRLittleEndian, "t")


def test_damaged_file_meta_is_refused() -> None:
    data = factory.part10_bytes(instance())
    # (0002,0001) OB: its length runs past the end of the file
    at = data.index(b"\x02\x00\x01\x00OB")
    damaged = data[: at + 8] + struct.pack("<I", 10**6) + data[at + 12 :]
    with pytest.raises(errors.MalformedDicom, match=r"File Meta Information \(0002,0001\).*runs past the end"):
        parse_part10(damaged, "t")


def test_a_file_head_is_filed_without_checking_the_rest() -> None:
    """``reindex`` files a stored file from its first 64 KiB."""
    data = factory.part10_bytes(factory.make_instance())
    assert len(data) > 65536
    with pytest.raises(errors.MalformedDicom):
        parse_part10(data[:65536], "t")
    assert parse_part10(data[:65536], "t", whole=False).key.sop_instance_uid


# --- what ingest accepts, the indexer reads ------------------------------------------


def _stored(tmp_path: Path, dataset: bytes, syntax: str) -> Path:
    parsed = parse_dataset(dataset, syntax, "t")  # ingest accepts it
    path = tmp_path / "stored.dcm"
    path.write_bytes(file_meta(parsed.sop_class_uid, parsed.key.sop_instance_uid, syntax) + dataset)
    return path


def test_a_deflated_instance_longer_than_the_head_is_indexed(tmp_path: Path) -> None:
    ds = factory.make_instance(rows=512, columns=512, transfer_syntax=DeflatedExplicitVRLittleEndian)
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, 512 * 512, dtype="<u2").tobytes()  # barely deflates
    path = _stored(tmp_path, dataset_of(ds), DeflatedExplicitVRLittleEndian)
    assert path.stat().st_size > HEAD_BYTES
    record, traits = read_instance(path, "t", DeflatedExplicitVRLittleEndian)
    assert record.key.sop_instance_uid == ds.SOPInstanceUID
    assert traits.bits_allocated == 16


def test_a_header_longer_than_the_head_is_indexed(tmp_path: Path) -> None:
    """A waveform (or an RT structure set) puts more than the head before Pixel Data,
    inside a sequence the head cuts."""
    waveform = Dataset()
    waveform.WaveformBitsAllocated = 16
    waveform.add_new(0x54001010, "OW", b"\x01\x00" * (HEAD_BYTES // 2 + 1000))
    path = _stored(tmp_path, dataset_of(instance(WaveformSequence=Sequence([waveform]))), ExplicitVRLittleEndian)
    record, _ = read_instance(path, "t", ExplicitVRLittleEndian)
    assert record.series_values


def test_pixel_attributes_that_do_not_convert_are_left_out(tmp_path: Path) -> None:
    """UN of 3 bytes where the dictionary says US: structure is fine, so ingest cannot tell
    without decoding; the indexer indexes the instance without knowing its pixels."""
    data = replace(_explicit(), BITS_ALLOCATED, element(BITS_ALLOCATED, b"UN", b"\x10\x00\x00"))
    path = _stored(tmp_path, data, ExplicitVRLittleEndian)
    record, traits = read_instance(path, "t", ExplicitVRLittleEndian)
    assert record.key.sop_instance_uid
    assert not traits.has_pixels


_Op = tuple[str, int, int, bytes]
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "truncate", "insert", "delete", "length"]),
        st.integers(0, 4000),
        st.integers(0, 2**32 - 1),
        st.sampled_from([b"\xff" * 8, b"\x00" * 8, ITEM_END, SEQUENCE_END, b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"UN"]),
    ),
    min_size=1,
    max_size=3,
)
_SEEDS = {
    syntax: dataset_of(factory.make_instance(rows=8, columns=8, transfer_syntax=syntax, **_with_sequences()))
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
}


def _mutate(data: bytes, ops: list[_Op]) -> bytes:
    for kind, a, b, payload in ops:
        if not data:
            return data
        i = a % len(data)
        if kind == "flip":
            data = data[:i] + bytes([data[i] ^ (b % 255 + 1)]) + data[i + 1 :]
        elif kind == "truncate":
            data = data[:i]
        elif kind == "insert":
            data = data[:i] + payload + data[i:]
        elif kind == "delete":
            data = data[:i] + data[i + 1 + b % 16 :]
        else:  # a 4-byte little endian number somewhere: where lengths are
            data = data[:i] + (b % (1 << 32)).to_bytes(4, "little") + data[i + 4 :]
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(syntax=st.sampled_from(sorted(_SEEDS)), ops=_OPS)
def test_what_ingest_accepts_the_indexer_reads(
    tmp_path: Path, syntax: str, ops: list[tuple[str, int, int, bytes]]
) -> None:
    data = _mutate(_SEEDS[syntax], ops)
    with warnings.catch_warnings():  # as in production: pydicom's warnings are not errors there
        warnings.simplefilter("ignore")
        try:
            path = _stored(tmp_path, data, syntax)
        except errors.DicomCloudError:
            return  # refused, with a reason
        record, _ = read_instance(path, "t", syntax)
    assert record.key.sop_instance_uid
