"""DICOM JSON model of one instance (PS3.18 Annex F), with BulkDataURIs.

Top-level binary values (OB, OD, OF, OL, OV, OW, UN) longer than
``BULK_THRESHOLD`` bytes, and Pixel Data always, become a ``BulkDataURI``
(F.2.7) that the WADO-RS bulkdata resource resolves; everything else is
pydicom's own Annex F encoding, so the metadata agrees with pydicom's JSON.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULK_THRESHOLD = 1024
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


def bulkdata_uri(instance_url: str, tag: int) -> str:
    return f"{instance_url}/bulkdata/{tag:08X}"


def instance_json(ds: Dataset, instance_url: str) -> dict[str, Any]:
    """``ds`` (file meta excluded) in the DICOM JSON model; bulk values as URIs."""
    result: dict[str, Any] = {}
    for key in list(ds.keys()):
        try:
            elem = ds[key]  # converts the raw element: a damaged one (unknown VR, a
        except Exception:  # length that does not fit it) is left out, as below
            continue
        tag = int(elem.tag)
        vr = str(elem.VR)
        if tag in PIXEL_DATA_TAGS or (vr in BULK_VRS and _length(elem) > BULK_THRESHOLD):
            result[f"{tag:08X}"] = {
                "vr": vr if vr != "OB or OW" else "OW",
                "BulkDataURI": bulkdata_uri(instance_url, tag),
            }
            continue
        try:
            entry = elem.to_json_dict(None, 1 << 30)
        except Exception:
            continue
        if fits_json(entry):
            result[f"{tag:08X}"] = entry
    return result


def fits_json(entry: dict[str, Any]) -> bool:
    """False for a number no JSON encoder we use holds (orjson: 64 bits), e.g. a
    damaged IS of 30 digits; such an attribute is left out."""
    return not any(isinstance(v, int) and not -(2**63) <= v < 2**63 for v in entry.get("Value", ()))


def _length(elem: Any) -> int:
    value = elem.value
    if value is None:
        return 0
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    return BULK_THRESHOLD + 1 if elem.VR in ("UN",) else 0
