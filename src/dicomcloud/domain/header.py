"""A stored instance's header → the records the index and the warehouse keep.

This is the one place where a pydicom dataset becomes our types
(``InstanceRecord.from_dataset``). Strict on what paths depend on (UIDs),
tolerant on the rest: an unparsable optional value is left out, not fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from dicomcloud.domain.attributes import (
    PATIENT_ATTRIBUTES,
    STORED_INSTANCE,
    STORED_SERIES,
    STORED_STUDY,
    Attribute,
)
from dicomcloud.domain.dicom_json import fits_json
from dicomcloud.domain.layout import InstanceKey
from dicomcloud.domain.uids import validate_uid
from dicomcloud.errors import MissingAttribute

JsonDict = dict[str, Any]


def _uid(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        raise MissingAttribute(f"{keyword} is missing or empty")
    return validate_uid(str(value), keyword)


def _text(value: Any) -> str:
    """``value`` as text without NUL: PostgreSQL text cannot hold it, and a damaged
    header can (PS3.5 §6.2 allows it only as UI padding)."""
    return str(value).replace("\x00", "")


def _match_value(attr: Attribute, elem_value: Any) -> Any:
    """The plain value a store matches on: str, int or list of str."""
    if elem_value is None or elem_value == "":
        return None
    if attr.vr in ("US", "UL", "SS", "SL", "IS"):
        try:
            number = int(elem_value)
        except (TypeError, ValueError):
            return None
        return number if -(2**63) <= number < 2**63 else None  # the stores' bigint
    if attr.vr == "CS" and not isinstance(elem_value, str):
        return [_text(v) for v in elem_value]
    if attr.vr == "TM":
        return normalize_time(_text(elem_value))
    return _text(elem_value).strip()


def normalize_time(value: str) -> str:
    """TM as HHMMSS[.FFFFFF], so that stored times compare as text (PS3.5 §6.2).

    Accepts the ACR-NEMA form with colons and the truncated forms HH and HHMM.
    """
    value = value.strip().replace(":", "")
    whole, _, fraction = value.partition(".")
    whole = whole.ljust(6, "0")
    return f"{whole}.{fraction}" if fraction else whole


def level_attributes(ds: Dataset, attrs: tuple[Attribute, ...]) -> tuple[JsonDict, dict[str, Any]]:
    """DICOM JSON (PS3.18 Annex F) of ``attrs`` present in ``ds``, and their match values."""
    json_attrs: JsonDict = {}
    values: dict[str, Any] = {}
    for attr in attrs:
        if attr.tag not in ds:
            continue
        try:
            elem = ds[attr.tag]
            entry = elem.to_json_dict(None, 1 << 30)
            if not fits_json(entry):
                continue  # a damaged IS of 30 digits: no message or store holds that number
            json_attrs[attr.tag_hex] = entry
            values[attr.column] = _match_value(attr, elem.value)
        except Exception:
            continue
    return json_attrs, values


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """Everything the index and the warehouse learn from one instance's header."""

    key: InstanceKey
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str
    patient: JsonDict = field(default_factory=dict)
    study: JsonDict = field(default_factory=dict)
    series: JsonDict = field(default_factory=dict)
    instance: JsonDict = field(default_factory=dict)
    patient_values: dict[str, Any] = field(default_factory=dict)
    study_values: dict[str, Any] = field(default_factory=dict)
    series_values: dict[str, Any] = field(default_factory=dict)
    instance_values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dataset(cls, ds: Dataset, tenant_id: str, transfer_syntax_uid: str) -> InstanceRecord:
        key = InstanceKey(
            tenant_id,
            _uid(ds, "StudyInstanceUID"),
            _uid(ds, "SeriesInstanceUID"),
            _uid(ds, "SOPInstanceUID"),
        )
        sop_class_uid = _uid(ds, "SOPClassUID")
        patient, patient_values = level_attributes(ds, PATIENT_ATTRIBUTES)
        study, study_values = level_attributes(ds, STORED_STUDY)
        series, series_values = level_attributes(ds, STORED_SERIES)
        instance, instance_values = level_attributes(ds, STORED_INSTANCE)
        return cls(
            key=key,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            patient_id=_text(ds.get("PatientID", "") or ""),
            patient=patient,
            study=study,
            series=series,
            instance=instance,
            patient_values=patient_values,
            study_values=study_values,
            series_values=series_values,
            instance_values=instance_values,
        )
