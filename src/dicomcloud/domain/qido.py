"""QIDO-RS query model (PS3.18 §10.6, §8.3.4): query parameters ↔ :class:`QidoQuery`.

Parameters (PS3.18 §8.3.4.1):

- ``{attributeID}={value}`` — attributeID is a keyword (``PatientID``) or eight hex
  digits (``00100020``); a key may appear once. Sequence paths (``a.b``) are refused.
- ``includefield`` — repeated and/or comma-separated attributeIDs, or ``all``.
  A valid attribute that the archive does not hold is accepted and simply absent
  from the results.
- ``fuzzymatching=true|false``; ``limit`` and ``offset`` (non-negative integers;
  ``limit`` above the configured maximum is refused, absent means the default).

Anything else is an error: no parameter is silently skipped.

Matching (PS3.4 §C.2.2.2), by Value Representation:

- empty value: universal matching (C.2.2.2.3) — no condition, the key is returned;
  a value made only of ``*`` is equivalent (C.2.2.2.4);
- single value matching (C.2.2.2.1) for every VR, case-sensitive except PN;
- list of UID matching (C.2.2.2.2): UIDs separated by backslashes or commas (PS3.18
  §8.3.4.1), for UI only — and for
  ModalitiesInStudy, a list of CS values (the study matches if any of its
  modalities is listed; PS3.4 C.6.2.1.2);
- wildcard matching (C.2.2.2.4): ``*`` and ``?`` for the string VRs (AE, CS, LO, LT,
  PN, SH, ST, UC, UT) — not for UI, DA, TM, DT or numbers;
- range matching (C.2.2.2.5): ``a-b``, ``-b``, ``a-`` for DA and TM (inclusive).

PN (PatientName, ReferringPhysicianName) matching is case-insensitive. With
``fuzzymatching=true`` (PS3.18 §8.3.4.1, PS3.4 C.2.2.2.1.1) a PN key with value
``v`` (wildcards allowed) matches a name when, ignoring case, the whole name
starts with ``v``, or any one name component — the parts of the name split on
``^``, ``=`` and spaces (family, given, middle, prefix, suffix, and each word of
them) — starts with ``v``. E.g. ``PatientName=jo`` matches ``Doe^John`` and
``Jones^Ann``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from dicomcloud.domain.attributes import (
    INSTANCE_ATTRIBUTES,
    INSTANCE_RETURN,
    PATIENT_ATTRIBUTES,
    SERIES_ATTRIBUTES,
    SERIES_RETURN,
    STUDY_ATTRIBUTES,
    STUDY_RETURN,
    Attribute,
    Level,
)
from dicomcloud.domain.uids import validate_tenant, validate_uid
from dicomcloud.errors import InvalidQuery, InvalidUID

JsonDict = dict[str, Any]

INCLUDEFIELD = "includefield"
FUZZYMATCHING = "fuzzymatching"
LIMIT = "limit"
OFFSET = "offset"
_MAX_OFFSET = 2**62
_MAX_VALUE_LENGTH = 1024

StudyInstanceUID = 0x0020000D
SeriesInstanceUID = 0x0020000E
SOPInstanceUID = 0x00080018
ModalitiesInStudy = 0x00080061

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
RANGE_VRS = frozenset({"DA", "TM"})
INTEGER_VRS = {
    "IS": (-(2**31), 2**31 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "US": (0, 2**16 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "UL": (0, 2**32 - 1),
}
_CS_RE = re.compile(r"[A-Z0-9 _*?]*")
_TM_RE = re.compile(r"([01][0-9]|2[0-3])(?:[0-5][0-9](?:(?:[0-5][0-9]|60)(?:\.[0-9]{1,6})?)?)?")


class Matching(str, Enum):
    """The kinds of attribute matching of PS3.4 §C.2.2.2."""

    UNIVERSAL = "universal"  # C.2.2.2.3
    SINGLE_VALUE = "single value"  # C.2.2.2.1
    LIST = "list"  # C.2.2.2.2 (UID list; CS list for ModalitiesInStudy)
    WILDCARD = "wildcard"  # C.2.2.2.4
    RANGE = "range"  # C.2.2.2.5


@dataclass(frozen=True, slots=True)
class MatchingKey:
    """One matching key: ``values`` is () for universal, (v,) for single value and
    wildcard, the items of a list, or (low, high) for a range ("" = open end)."""

    attribute: Attribute
    matching: Matching
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class QidoQuery:
    level: Level
    tenant_id: str
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    limit: int | None = None
    offset: int = 0
    matching_keys: tuple[MatchingKey, ...] = ()
    include_fields: tuple[int, ...] = ()  # tags, sorted, unique
    include_all: bool = False
    fuzzy_matching: bool = False


@dataclass(frozen=True)
class QidoResult:
    """The matches of one page (DICOM JSON objects, PS3.18 Annex F) and whether
    more matches exist beyond it (PS3.18 §10.6.3.3 Warning 299)."""

    matches: list[JsonDict] = field(default_factory=list)
    more: bool = False


# ---------------------------------------------------------------------------
# Which keys a resource matches on, and which attributes it returns
# (PS3.18 §10.6.1.2, Tables 10.6.3-3..5).


def resource_name(query_level: Level, study: bool, series: bool) -> str:
    if query_level is Level.STUDY:
        return "/studies"
    if query_level is Level.SERIES:
        return "/studies/{study}/series" if study else "/series"
    if series:
        return "/studies/{study}/series/{series}/instances"
    return "/studies/{study}/instances" if study else "/instances"


def returned_levels(level: Level, study: bool, series: bool) -> tuple[Level, ...]:
    """Levels whose attributes a resource returns: its own and the parents not
    fixed by the path (PS3.18 Tables 10.6.3-4 and 10.6.3-5)."""
    if level is Level.STUDY:
        return (Level.STUDY,)
    if level is Level.SERIES:
        return (Level.SERIES,) if study else (Level.STUDY, Level.SERIES)
    if level is Level.INSTANCE:
        if series:
            return (Level.INSTANCE,)
        if study:
            return (Level.SERIES, Level.INSTANCE)
        return (Level.STUDY, Level.SERIES, Level.INSTANCE)
    raise ValueError(f"QIDO-RS has no {level.value} level resource")


_LEVEL_KEYS: dict[Level, tuple[Attribute, ...]] = {
    Level.STUDY: PATIENT_ATTRIBUTES + STUDY_ATTRIBUTES,
    Level.SERIES: SERIES_ATTRIBUTES,
    Level.INSTANCE: INSTANCE_ATTRIBUTES,
}
_LEVEL_RETURN: dict[Level, tuple[Attribute, ...]] = {
    Level.STUDY: STUDY_RETURN,
    Level.SERIES: SERIES_RETURN,
    Level.INSTANCE: INSTANCE_RETURN,
}


def supported_keys(level: Level, study: bool, series: bool) -> dict[int, Attribute]:
    """Matching keys of a resource: those of the levels it returns (the study UID and
    series UID given in the path are not query keys there)."""
    keys: dict[int, Attribute] = {}
    for lvl in returned_levels(level, study, series):
        keys.update((a.tag, a) for a in _LEVEL_KEYS[lvl] if a.matchable)
    return keys


def level_uids(level: Level) -> tuple[int, ...]:
    """The UIDs always returned: of the level and its parents."""
    return {
        Level.STUDY: (StudyInstanceUID,),
        Level.SERIES: (StudyInstanceUID, SeriesInstanceUID),
        Level.INSTANCE: (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID),
    }[level]


def query_returned_levels(query: QidoQuery) -> tuple[Level, ...]:
    return returned_levels(query.level, query.study_instance_uid is not None, query.series_instance_uid is not None)


def return_tags(query: QidoQuery) -> frozenset[str]:
    """Tags (8 hex digits) a result carries, besides "everything held" for ``all``:
    the default return keys of the returned levels, the matching keys, the
    include fields and the UIDs of the level and its parents."""
    tags: set[int] = set(level_uids(query.level))
    for lvl in query_returned_levels(query):
        tags.update(a.tag for a in _LEVEL_RETURN[lvl])
    tags.update(k.attribute.tag for k in query.matching_keys)
    tags.update(query.include_fields)
    return frozenset(f"{t:08X}" for t in tags)


# ---------------------------------------------------------------------------
# Parsing


def _describe(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return f"{keyword} ({tag:08X})" if keyword else f"({tag:08X})"


def _resolve(key: str, what: str) -> int:
    """A keyword or 8-hex-digit tag of the data dictionary (PS3.6) to its tag."""
    if "." in key:
        raise InvalidQuery(f"{what} {key[:80]!r}: sequence attribute paths are not supported for matching")
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        tag = int(key, 16)
        try:
            dictionary_VR(tag)
        except KeyError:
            raise InvalidQuery(f"unknown attribute {key!r}: not in the DICOM data dictionary") from None
        return tag
    found = tag_for_keyword(key)
    if found is None:
        raise InvalidQuery(
            f"unknown attribute or parameter {key[:80]!r}: not a DICOM keyword, an 8 hex "
            "digit tag, or one of includefield, fuzzymatching, limit, offset"
        )
    return found


def _non_negative(name: str, raw: str, maximum: int) -> int:
    if not raw.isascii() or not raw.isdigit():
        raise InvalidQuery(f"{name}={raw[:40]!r} is not a non-negative integer")
    value = int(raw)
    if value > maximum:
        raise InvalidQuery(f"{name}={value} exceeds the maximum of {maximum}")
    return value


def _check_da(attr: Attribute, value: str) -> None:
    if len(value) != 8 or not value.isascii() or not value.isdigit():
        raise InvalidQuery(f"{attr.keyword}={value[:40]!r} is not a DA date YYYYMMDD")
    try:
        date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise InvalidQuery(f"{attr.keyword}={value!r} is not a valid date") from None


def _check_tm(attr: Attribute, value: str) -> None:
    if not _TM_RE.fullmatch(value):
        raise InvalidQuery(f"{attr.keyword}={value[:40]!r} is not a TM time HH[MM[SS[.FFFFFF]]]")


def _parse_range(attr: Attribute, value: str) -> MatchingKey:
    if value.count("-") != 1:
        raise InvalidQuery(f"{attr.keyword}={value[:40]!r}: a range is 'low-high', '-high' or 'low-'")
    low, high = value.split("-")
    if not low and not high:
        raise InvalidQuery(f"{attr.keyword}='-': a range needs at least one end")
    check = _check_da if attr.vr == "DA" else _check_tm
    for end in (low, high):
        if end:
            check(attr, end)
    if low and high and _sortable(attr, low) > _sortable(attr, high):
        raise InvalidQuery(f"{attr.keyword}={value!r}: the range starts after it ends")
    return MatchingKey(attr, Matching.RANGE, (low, high))


def _sortable(attr: Attribute, value: str) -> str:
    if attr.vr == "TM":
        whole, _, fraction = value.partition(".")
        return whole.ljust(6, "0") + "." + fraction.ljust(6, "0")
    return value


def _is_list_attribute(attr: Attribute) -> bool:
    return attr.vr == "UI" or attr.tag == ModalitiesInStudy


def parse_value(attr: Attribute, raw: str) -> MatchingKey:
    """One ``attribute=value`` pair → its :class:`MatchingKey` (PS3.4 §C.2.2.2)."""
    value = raw.strip(" ")
    if len(value) > _MAX_VALUE_LENGTH:
        raise InvalidQuery(f"{attr.keyword}: value longer than {_MAX_VALUE_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidQuery(f"{attr.keyword}: control characters are not allowed in a value")
    if value == "" or (set(value) == {"*"} and attr.vr in WILDCARD_VRS):
        return MatchingKey(attr, Matching.UNIVERSAL)
    if _is_list_attribute(attr) and "," in value:
        value = value.replace(",", "\\")  # PS3.18 §8.3.4.1 lists by comma; UIDs and CS hold none
    if "\\" in value:
        if not _is_list_attribute(attr):
            raise InvalidQuery(
                f"{attr.keyword}: list matching (backslash-separated values) applies to UIDs "
                f"and ModalitiesInStudy only, not to VR {attr.vr}"
            )
        if "*" in value or "?" in value:
            raise InvalidQuery(f"{attr.keyword}: wildcards cannot be combined with a list of values")
        items = tuple(v.strip(" ") for v in value.split("\\"))
        for item in items:
            _check_single(attr, item)
        return MatchingKey(attr, Matching.LIST, items)
    if "*" in value or "?" in value:
        if attr.vr not in WILDCARD_VRS:
            raise InvalidQuery(
                f"{attr.keyword}={value[:40]!r}: wildcard matching (* and ?) does not apply to VR {attr.vr}"
            )
        _check_string(attr, value)
        return MatchingKey(attr, Matching.WILDCARD, (value,))
    if attr.vr in RANGE_VRS and "-" in value:
        return _parse_range(attr, value)
    _check_single(attr, value)
    return MatchingKey(attr, Matching.SINGLE_VALUE, (value,))


def _check_string(attr: Attribute, value: str) -> None:
    if attr.vr == "CS" and not _CS_RE.fullmatch(value):
        raise InvalidQuery(
            f"{attr.keyword}={value[:40]!r} is not a CS value: upper-case letters, digits, space and underscore"
        )


def _check_single(attr: Attribute, value: str) -> None:
    if value == "":
        raise InvalidQuery(f"{attr.keyword}: empty item in a list of values")
    if attr.vr == "UI":
        try:
            validate_uid(value, attr.keyword)
        except InvalidUID as exc:
            raise InvalidQuery(exc.reason) from None
    elif attr.vr == "DA":
        _check_da(attr, value)
    elif attr.vr == "TM":
        _check_tm(attr, value)
    elif attr.vr in INTEGER_VRS:
        low, high = INTEGER_VRS[attr.vr]
        if not re.fullmatch(r"[+-]?[0-9]{1,12}", value) or not low <= int(value) <= high:
            raise InvalidQuery(
                f"{attr.keyword}={value[:40]!r} is not an integer ({attr.vr}, {low}..{high})"
                + ("; range matching applies to DA and TM only" if "-" in value[1:] else "")
            )
    elif attr.vr in WILDCARD_VRS:
        _check_string(attr, value)
    else:
        raise InvalidQuery(f"{attr.keyword}: matching on VR {attr.vr} is not supported")


def _include_fields(values: Iterable[str]) -> Iterator[int | None]:
    """Tags named by includefield values; None for ``all``."""
    for raw in values:
        for item in raw.split(","):
            item = item.strip()
            if item == "all":
                yield None
            elif item:
                yield _resolve(item, "includefield")
            else:
                raise InvalidQuery("includefield has an empty item")


def parse_qido(
    level: Level,
    tenant_id: str,
    params: list[tuple[str, str]],
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    default_limit: int,
    max_limit: int,
) -> QidoQuery:
    """Parse the query items of a QIDO-RS request (PS3.18 §8.3.4, §10.6.1).

    Raises :class:`InvalidQuery` (HTTP 400) with the reason for anything it cannot
    honour exactly.
    """
    validate_tenant(tenant_id)
    if study_instance_uid is not None:
        study_instance_uid = validate_uid(study_instance_uid, "StudyInstanceUID")
    if series_instance_uid is not None:
        if study_instance_uid is None:
            raise ValueError("a series in the path needs its study")
        series_instance_uid = validate_uid(series_instance_uid, "SeriesInstanceUID")
    if level is Level.STUDY and study_instance_uid is not None:
        raise ValueError("a study-level search has no study in its path")
    if level is not Level.INSTANCE and series_instance_uid is not None:
        raise ValueError("only an instance-level search has a series in its path")
    in_study, in_series = study_instance_uid is not None, series_instance_uid is not None
    allowed = supported_keys(level, in_study, in_series)

    limit: int | None = None
    offset: int | None = None
    fuzzy: bool | None = None
    include: set[int] = set()
    include_all = False
    keys: dict[int, MatchingKey] = {}
    for name, value in params:
        if name == INCLUDEFIELD:
            for tag in _include_fields([value]):
                if tag is None:
                    include_all = True
                else:
                    include.add(tag)
        elif name == FUZZYMATCHING:
            if fuzzy is not None:
                raise InvalidQuery("fuzzymatching is given more than once")
            if value not in ("true", "false"):
                raise InvalidQuery(f"fuzzymatching={value[:40]!r}: use true or false")
            fuzzy = value == "true"
        elif name == LIMIT:
            if limit is not None:
                raise InvalidQuery("limit is given more than once")
            limit = _non_negative(LIMIT, value, max_limit)
        elif name == OFFSET:
            if offset is not None:
                raise InvalidQuery("offset is given more than once")
            offset = _non_negative(OFFSET, value, _MAX_OFFSET)
        else:
            tag = _resolve(name, "matching key")
            attr = allowed.get(tag)
            if attr is None:
                listed = ", ".join(a.keyword for a in allowed.values())
                raise InvalidQuery(
                    f"{_describe(tag)} is not supported for matching in a "
                    f"{resource_name(level, in_study, in_series)} search "
                    f"({level.value} level); supported keys: {listed}"
                )
            if tag in keys:
                raise InvalidQuery(f"{attr.keyword} is given more than once")
            keys[tag] = parse_value(attr, value)
    return QidoQuery(
        level=level,
        tenant_id=tenant_id,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        limit=default_limit if limit is None else limit,
        offset=offset or 0,
        matching_keys=tuple(keys.values()),
        include_fields=tuple(sorted(include)),
        include_all=include_all,
        fuzzy_matching=bool(fuzzy),
    )


def format_value(key: MatchingKey) -> str:
    """The query value of a matching key (inverse of :func:`parse_value`)."""
    if key.matching is Matching.RANGE:
        return f"{key.values[0]}-{key.values[1]}"
    return "\\".join(key.values)


def format_qido(query: QidoQuery) -> list[tuple[str, str]]:
    """The query items of ``query`` (inverse of :func:`parse_qido`)."""
    items = [(k.attribute.keyword, format_value(k)) for k in query.matching_keys]
    items += [(INCLUDEFIELD, keyword_for_tag(t) or f"{t:08X}") for t in query.include_fields]
    if query.include_all:
        items.append((INCLUDEFIELD, "all"))
    if query.fuzzy_matching:
        items.append((FUZZYMATCHING, "true"))
    if query.limit is not None:
        items.append((LIMIT, str(query.limit)))
    if query.offset:
        items.append((OFFSET, str(query.offset)))
    return items
