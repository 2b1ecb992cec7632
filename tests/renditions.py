"""Instances in the transfer syntaxes a viewer cannot decode, for the converter's tests.

No encoder here writes JPEG 2000 Part 2 (.92/.93) itself, so those instances
carry a JPEG 2000 Part 1 codestream written by openjpeg (pylibjpeg-openjpeg,
through ``Dataset.compress``) under the Part 2 UID: a Part 1 codestream is a
valid Part 2 codestream, and the Part 1 twin gives the reference pixels
pydicom decodes. Retired JPEG processes come from DCMTK's ``dcmcjpeg``
(spectral selection .53, progressive .55); deflated files from pydicom.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    JPEG2000MC,
    MPEG4HP41,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
)

from tests.factory import make_instance, part10_bytes, read


def decoded(ds: Dataset) -> np.ndarray:
    """pydicom's decode of ``ds`` as stored (through its Part 10 bytes)."""
    return read(part10_bytes(ds)).pixel_array


def relabel(ds: Dataset, transfer_syntax: str) -> Dataset:
    """A copy of ``ds`` whose File Meta says ``transfer_syntax`` (same encoding, same bytes)."""
    copy = read(part10_bytes(ds))
    copy.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return copy


def j2k_part2(**kw: Any) -> tuple[Dataset, np.ndarray]:
    """A JPEG 2000 Part 2 Lossless (.92) instance and the pixels of its codestream."""
    twin = make_instance(transfer_syntax=JPEG2000Lossless, **kw)
    return relabel(twin, JPEG2000MCLossless), decoded(twin)


def j2k_part2_lossy(**kw: Any) -> tuple[Dataset, np.ndarray]:
    """A JPEG 2000 Part 2 (.93) instance, lossy (compression ratio 20), and its decoded pixels."""
    twin = make_instance(transfer_syntax=ExplicitVRLittleEndian, **kw)
    twin.compress(JPEG2000, encoding_plugin="pylibjpeg", generate_instance_uid=False, j2k_cr=[20])
    return relabel(twin, JPEG2000MC), decoded(twin)


def deflated(**kw: Any) -> tuple[Dataset, np.ndarray]:
    ds = make_instance(transfer_syntax=DeflatedExplicitVRLittleEndian, **kw)
    return ds, decoded(ds)


def corrupt(ds: Dataset) -> Dataset:
    """``ds`` with its header intact and its (only) fragment no longer a codestream."""
    copy = read(part10_bytes(ds))
    copy.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 4])
    return copy


def video(**kw: Any) -> Dataset:
    """An instance labelled MPEG-4 AVC/H.264 (.102); its one fragment is not a real stream."""
    ds = make_instance(transfer_syntax=ExplicitVRLittleEndian, **kw)
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01" + b"\x67" * 60])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    return ds


def dcmtk_jpeg(ds: Dataset, option: str) -> tuple[Dataset, np.ndarray]:
    """``ds`` encoded by DCMTK ``dcmcjpeg <option>`` (``+es`` .53, ``+ep`` .55), and DCMTK's
    own decode of it (``dcmdjpeg``): an independent reference for the pixels."""
    if shutil.which("dcmcjpeg") is None or shutil.which("dcmdjpeg") is None:
        reason = "DCMTK's dcmcjpeg/dcmdjpeg are not installed (scripts/install-deps.sh installs them)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    with tempfile.TemporaryDirectory() as tmp:
        src, out, back = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm", Path(tmp) / "back.dcm"
        src.write_bytes(part10_bytes(ds))
        subprocess.run(["dcmcjpeg", option, str(src), str(out)], check=True, capture_output=True)
        subprocess.run(["dcmdjpeg", str(out), str(back)], check=True, capture_output=True)
        return read(out.read_bytes()), read(back.read_bytes()).pixel_array
