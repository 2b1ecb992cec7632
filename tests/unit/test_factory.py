"""The test-data factory makes what it claims: readable files, decodable pixels, right syntaxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from tests import factory


@pytest.mark.parametrize("syntax", factory.ALL_SYNTAXES, ids=lambda ts: ts.name)
def test_every_syntax_round_trips(syntax: str) -> None:
    ds = factory.make_instance(
        transfer_syntax=syntax, rows=40, columns=32, number_of_frames=3, bulk_bytes=2048
    )
    data = factory.part10_bytes(ds)
    assert data[128:132] == b"DICM"

    back = factory.read(data)
    assert back.file_meta.TransferSyntaxUID == syntax
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.StudyInstanceUID == ds.StudyInstanceUID
    expected = factory.pixel_array(40, 32, 3, seed=ds.InstanceNumber)
    assert np.array_equal(back.pixel_array, expected)
    assert len(back[factory.bulk_tag()].value) == 2048

    frames = factory.frames(back)
    assert len(frames) == 3
    assert len(set(frames)) == 3
    if not syntax.is_compressed:
        assert all(len(f) == 40 * 32 * 2 for f in frames)


def test_same_arguments_same_bytes_and_uids() -> None:
    a = factory.make_instance(PatientID="P9", InstanceNumber=4, rows=16, columns=16)
    b = factory.make_instance(PatientID="P9", InstanceNumber=4, rows=16, columns=16)
    assert factory.part10_bytes(a) == factory.part10_bytes(b)
    c = factory.make_instance(PatientID="P9", InstanceNumber=5, rows=16, columns=16)
    assert c.SOPInstanceUID != a.SOPInstanceUID
    assert c.SeriesInstanceUID == a.SeriesInstanceUID
    assert c.StudyInstanceUID == a.StudyInstanceUID
    for value in (a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID):
        assert len(value) <= 64
        assert value.replace(".", "").isdigit()


def test_series_and_default_image() -> None:
    series = factory.make_series(3, SeriesNumber=2, Modality="MR", transfer_syntax=RLELossless)
    assert [ds.InstanceNumber for ds in series] == [1, 2, 3]
    assert len({ds.SeriesInstanceUID for ds in series}) == 1
    assert len({ds.SOPInstanceUID for ds in series}) == 3
    default = factory.make_instance()
    assert (default.Rows, default.Columns, default.BitsAllocated) == (512, 512, 16)
    assert default.PhotometricInterpretation == "MONOCHROME2"
    assert default.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert "RescaleSlope" in default
    assert "WindowCenter" in default


def test_dataset_bytes_strips_meta() -> None:
    ds = factory.make_instance(rows=8, columns=8, transfer_syntax=ImplicitVRLittleEndian)
    data = factory.part10_bytes(ds)
    body = factory.dataset_bytes(data)
    assert data.endswith(body)
    assert body[:4] == b"\x08\x00\x05\x00"  # (0008,0005) SpecificCharacterSet comes first


def test_cli_writes_studies(tmp_path: Path) -> None:
    code = factory.main(
        [
            str(tmp_path),
            "--studies",
            "2",
            "--series-per-study",
            "2",
            "--instances",
            "3",
            "--rows",
            "16",
            "--columns",
            "16",
        ]
    )
    assert code == 0
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 12
    datasets = [factory.read(p) for p in files]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 2
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 4
    assert len({ds.SOPInstanceUID for ds in datasets}) == 12
