"""Which attributes each query/retrieve level holds (PS3.18 §10.6.3.3, PS3.4 C.6).

One registry serves the indexer (what to extract from a header), QIDO
(what may be matched and what is returned by default) and the stores
(column names). Keywords and tags are the standard's (PS3.6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword


class Level(str, Enum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    INSTANCE = "IMAGE"


@dataclass(frozen=True, slots=True)
class Attribute:
    keyword: str
    tag: int
    vr: str
    level: Level
    column: str  # column name in the stores; snake_case of the keyword
    matchable: bool = True  # may appear as a QIDO matching key
    computed: bool = False  # derived by the archive (counts, modalities)

    @property
    def tag_hex(self) -> str:
        return f"{self.tag:08X}"


def _snake(keyword: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", keyword).lower()


def _attr(keyword: str, level: Level, *, matchable: bool = True, computed: bool = False) -> Attribute:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return Attribute(keyword, tag, dictionary_VR(tag), level, _snake(keyword), matchable, computed)


P, ST, SE, IN = Level.PATIENT, Level.STUDY, Level.SERIES, Level.INSTANCE

PATIENT_ATTRIBUTES: tuple[Attribute, ...] = (
    _attr("PatientName", P),
    _attr("PatientID", P),
    _attr("IssuerOfPatientID", P),
    _attr("PatientBirthDate", P),
    _attr("PatientSex", P),
)

STUDY_ATTRIBUTES: tuple[Attribute, ...] = (
    _attr("StudyInstanceUID", ST),
    _attr("StudyDate", ST),
    _attr("StudyTime", ST),
    _attr("AccessionNumber", ST),
    _attr("ReferringPhysicianName", ST),
    _attr("StudyID", ST),
    _attr("StudyDescription", ST),
    _attr("InstitutionName", ST),
    _attr("ModalitiesInStudy", ST, computed=True),
    _attr("NumberOfStudyRelatedSeries", ST, matchable=False, computed=True),
    _attr("NumberOfStudyRelatedInstances", ST, matchable=False, computed=True),
)

SERIES_ATTRIBUTES: tuple[Attribute, ...] = (
    _attr("SeriesInstanceUID", SE),
    _attr("Modality", SE),
    _attr("SeriesNumber", SE),
    _attr("SeriesDescription", SE),
    _attr("SeriesDate", SE),
    _attr("SeriesTime", SE),
    _attr("BodyPartExamined", SE),
    _attr("Laterality", SE),
    _attr("PerformedProcedureStepStartDate", SE),
    _attr("PerformedProcedureStepStartTime", SE),
    _attr("NumberOfSeriesRelatedInstances", SE, matchable=False, computed=True),
)

INSTANCE_ATTRIBUTES: tuple[Attribute, ...] = (
    _attr("SOPClassUID", IN),
    _attr("SOPInstanceUID", IN),
    _attr("InstanceNumber", IN),
    _attr("ContentDate", IN),
    _attr("ContentTime", IN),
    _attr("ImageType", IN, matchable=False),
    _attr("Rows", IN),
    _attr("Columns", IN),
    _attr("BitsAllocated", IN),
    _attr("NumberOfFrames", IN),
    _attr("AcquisitionNumber", IN),
)

ALL_ATTRIBUTES: tuple[Attribute, ...] = PATIENT_ATTRIBUTES + STUDY_ATTRIBUTES + SERIES_ATTRIBUTES + INSTANCE_ATTRIBUTES
BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ALL_ATTRIBUTES}
BY_TAG: dict[int, Attribute] = {a.tag: a for a in ALL_ATTRIBUTES}

# Attributes returned by default at each QIDO level (PS3.18 Tables 10.6.3-3..5).
STUDY_RETURN = PATIENT_ATTRIBUTES + STUDY_ATTRIBUTES
SERIES_RETURN = SERIES_ATTRIBUTES
INSTANCE_RETURN = INSTANCE_ATTRIBUTES

# Stored (non-computed) attributes the indexer extracts per level.
STORED_STUDY = tuple(a for a in STUDY_RETURN if not a.computed)
STORED_SERIES = tuple(a for a in SERIES_ATTRIBUTES if not a.computed)
STORED_INSTANCE = INSTANCE_ATTRIBUTES


def resolve(key: str) -> int | None:
    """A QIDO key (keyword or 8 hex digit tag) to its tag, or None if unknown."""
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return int(key, 16)
    return tag_for_keyword(key)


def keyword_of(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"
