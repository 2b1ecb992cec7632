"""Deterministic DICOM test data, built with pydicom.

The same arguments always give the same bytes: UIDs come from
``pydicom.uid.generate_uid(entropy_srcs=[...])`` and pixel values from a
formula, so tests, benchmarks and ``storescu`` runs can refer to instances
they did not keep.

::

    ds = make_instance(PatientID="P1", InstanceNumber=3)
    data = part10_bytes(ds)                        # what storescu would send
    series = make_series(10, transfer_syntax=RLELossless)
    write_series(tmp_path, 10)                     # files for storescu

    python -m tests.factory DIR --studies 2 --series-per-study 3 --instances 100

Transfer syntaxes: Implicit VR LE, Explicit VR LE (default), Explicit VR BE,
Deflated Explicit VR LE, and, encoded with ``Dataset.compress``, RLE Lossless
(pydicom's own encoder), JPEG-LS Lossless (pyjpegls) and JPEG 2000 Lossless
(pylibjpeg-openjpeg).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

NATIVE_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
# encoder plugin for Dataset.compress, per syntax
COMPRESSED_SYNTAXES = {
    RLELossless: "pydicom",
    JPEGLSLossless: "pyjpegls",
    JPEG2000Lossless: "pylibjpeg",
}
ALL_SYNTAXES = NATIVE_SYNTAXES + tuple(COMPRESSED_SYNTAXES)

# private block for the optional non-pixel bulk element
PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "DICOMCLOUD FACTORY"
PRIVATE_BULK_OFFSET = 0x01  # element (0011,xx01), VR OB

_STUDY_TIMES = ("081500", "093000", "101500", "134500", "160000")


def uid(*parts: object) -> UID:
    """A deterministic UID derived from ``parts``."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def pixel_array(rows: int, columns: int, frames: int = 1, seed: int = 0) -> np.ndarray:
    """Deterministic 12-bit values in uint16; shape (rows, cols) or (frames, rows, cols).

    Smooth enough that lossless codecs compress it, varied enough that a
    frame mixed up with another is caught.
    """
    r = np.arange(rows, dtype=np.uint32)[:, None]
    c = np.arange(columns, dtype=np.uint32)[None, :]
    out = np.empty((frames, rows, columns), dtype=np.uint16)
    for f in range(frames):
        base = (r * 3 + c * 5 + (r * c) // 64 + 97 * (seed + f)) % 4096
        out[f] = base.astype(np.uint16)
    return out[0] if frames == 1 else out


def make_instance(
    *,
    PatientName: str = "Doe^Jane",
    PatientID: str = "DCF0001",
    PatientBirthDate: str = "19700101",
    PatientSex: str = "F",
    StudyDate: str = "20240102",
    StudyTime: str = "101500",
    AccessionNumber: str = "ACC0001",
    StudyDescription: str = "CT CHEST",
    StudyID: str = "1",
    ReferringPhysicianName: str = "Ref^Doctor",
    Modality: str = "CT",
    SeriesNumber: int = 1,
    SeriesDescription: str = "AXIAL 5mm",
    InstanceNumber: int = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class_uid: str = CTImageStorage,
    rows: int = 512,
    columns: int = 512,
    number_of_frames: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
    bulk_bytes: int = 0,
    **extra: Any,
) -> Dataset:
    """One SOP instance (CT Image Storage by default), ready for :func:`part10_bytes`.

    UIDs missing from the arguments are derived from the identifying
    attributes: the study from PatientID/AccessionNumber/StudyDate, the series
    from the study and SeriesNumber, the instance from the series and
    InstanceNumber. ``bulk_bytes`` > 0 adds a private OB element of that
    length (non-pixel bulk data). ``extra`` sets further attributes by keyword.
    JPEG 2000 needs at least 32 rows and columns (openjpeg's default of six
    resolution levels).
    """
    transfer_syntax = UID(transfer_syntax)
    if transfer_syntax not in ALL_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax!r}")
    if study_uid is None:
        study_uid = uid("study", PatientID, AccessionNumber, StudyDate)
    if series_uid is None:
        series_uid = uid("series", study_uid, SeriesNumber)
    if sop_uid is None:
        sop_uid = uid("sop", series_uid, InstanceNumber)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = StudyDate
    ds.SeriesDate = StudyDate
    ds.ContentDate = StudyDate
    ds.StudyTime = StudyTime
    ds.SeriesTime = StudyTime
    ds.ContentTime = StudyTime
    ds.AccessionNumber = AccessionNumber
    ds.Modality = Modality
    ds.Manufacturer = "dicomcloud factory"
    ds.ReferringPhysicianName = ReferringPhysicianName
    ds.StudyDescription = StudyDescription
    ds.SeriesDescription = SeriesDescription
    ds.PatientName = PatientName
    ds.PatientID = PatientID
    ds.PatientBirthDate = PatientBirthDate
    ds.PatientSex = PatientSex
    ds.SliceThickness = "5.0"
    ds.KVP = "120"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = StudyID
    ds.SeriesNumber = SeriesNumber
    ds.InstanceNumber = InstanceNumber
    ds.ImagePositionPatient = [-250.0, -250.0, -5.0 * InstanceNumber]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = uid("for", study_uid, SeriesNumber)
    ds.SliceLocation = -5.0 * InstanceNumber
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if number_of_frames > 1:
        ds.NumberOfFrames = number_of_frames
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.9765625, 0.9765625]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    if bulk_bytes > 0:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(PRIVATE_BULK_OFFSET, "OB", _bulk_value(bulk_bytes, sop_uid))

    arr = pixel_array(rows, columns, number_of_frames, seed=InstanceNumber)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMCLOUD_TEST"
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128  # so that a plain dcmwrite (dicomweb-client's STOW) writes Part 10

    if transfer_syntax in COMPRESSED_SYNTAXES:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = arr.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
        ds.compress(
            transfer_syntax,
            encoding_plugin=COMPRESSED_SYNTAXES[transfer_syntax],
            generate_instance_uid=False,
        )
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        dtype = ">u2" if transfer_syntax == ExplicitVRBigEndian else "<u2"
        ds.PixelData = arr.astype(dtype).tobytes()
        ds["PixelData"].VR = "OW"
    ds.set_original_encoding(
        transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian, ds.SpecificCharacterSet
    )
    return ds


def _bulk_value(length: int, salt: str) -> bytes:
    length += length % 2  # OB values have even length
    seed = int.from_bytes(salt.encode()[-8:], "big") % (2**32)
    return np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()


def bulk_tag() -> int:
    """The tag of the private OB element that ``bulk_bytes`` adds."""
    return (PRIVATE_GROUP << 16) | 0x1000 | PRIVATE_BULK_OFFSET


def part10_bytes(ds: Dataset) -> bytes:
    """The DICOM file (PS3.10: preamble, ``DICM``, file meta, data set) for ``ds``."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dataset_bytes(data: bytes) -> bytes:
    """The data set of a Part 10 file, without preamble and file meta information."""
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file")
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL value
    return data[144 + group_length :]


def frames(ds: Dataset) -> list[bytes]:
    """The frames of ``ds`` as a WADO-RS frame retrieve returns them (PS3.18 §9.5.1.2.1)."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    pixel_data: bytes = ds.PixelData
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return list(generate_frames(pixel_data, number_of_frames=n))
    size = ds.Rows * ds.Columns * ds.SamplesPerPixel * (ds.BitsAllocated // 8)
    return [pixel_data[i * size : (i + 1) * size] for i in range(n)]


def make_series(n: int, *, first_instance: int = 1, **kw: Any) -> list[Dataset]:
    """``n`` instances of one series (InstanceNumber ``first_instance`` ...)."""
    return [make_instance(InstanceNumber=first_instance + i, **kw) for i in range(n)]


def write_series(
    directory: Path | str, n: int, *, prefix: str = "", **kw: Any
) -> list[tuple[Path, Dataset]]:
    """Write ``n`` instances of one series as Part 10 files; return (path, dataset) pairs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for ds in make_series(n, **kw):
        path = directory / f"{prefix}{ds.SeriesNumber:03d}_{ds.InstanceNumber:05d}.dcm"
        path.write_bytes(part10_bytes(ds))
        written.append((path, ds))
    return written


def write_studies(
    directory: Path | str,
    *,
    studies: int,
    series_per_study: int,
    instances: int,
    rows: int = 512,
    columns: int = 512,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """Write ``studies`` x ``series_per_study`` x ``instances`` files under ``directory``."""
    directory = Path(directory)
    paths: list[Path] = []
    for s in range(studies):
        patient = f"DCF{s + 1:04d}"
        for k in range(series_per_study):
            written = write_series(
                directory / f"study{s + 1:03d}",
                instances,
                PatientID=patient,
                PatientName=f"Test^Patient{s + 1:04d}",
                AccessionNumber=f"ACC{s + 1:05d}",
                StudyDate=f"2024{(s % 12) + 1:02d}{(s % 28) + 1:02d}",
                StudyTime=_STUDY_TIMES[s % len(_STUDY_TIMES)],
                SeriesNumber=k + 1,
                rows=rows,
                columns=columns,
                transfer_syntax=transfer_syntax,
            )
            paths.extend(p for p, _ in written)
    return paths


def read(data: bytes | Path) -> Dataset:
    """Parse Part 10 bytes (or a file) with pydicom."""
    if isinstance(data, Path):
        return pydicom.dcmread(data)
    return pydicom.dcmread(io.BytesIO(data))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.factory",
        description="Write deterministic DICOM files (for benchmarks and storescu).",
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--studies", type=int, default=1)
    parser.add_argument("--series-per-study", type=int, default=1)
    parser.add_argument("--instances", type=int, default=10, help="instances per series")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--columns", type=int, default=512)
    parser.add_argument(
        "--transfer-syntax",
        default=str(ExplicitVRLittleEndian),
        choices=[str(ts) for ts in ALL_SYNTAXES],
    )
    args = parser.parse_args(argv)
    paths = write_studies(
        args.directory,
        studies=args.studies,
        series_per_study=args.series_per_study,
        instances=args.instances,
        rows=args.rows,
        columns=args.columns,
        transfer_syntax=args.transfer_syntax,
    )
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files ({total / 2**20:.1f} MiB) under {args.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
