"""QIDO-RS query parsing (PS3.18 §8.3.4, §10.6.1; matching kinds per PS3.4 §C.2.2.2)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomcloud.domain.attributes import BY_KEYWORD, Level
from dicomcloud.domain.qido import (
    Matching,
    MatchingKey,
    QidoQuery,
    format_qido,
    parse_qido,
    return_tags,
    supported_keys,
)
from dicomcloud.errors import InvalidInput, InvalidQuery

S, SE, IN = Level.STUDY, Level.SERIES, Level.INSTANCE
STUDY = "1.2.3"
SERIES = "1.2.3.4"


def parse(
    params: list[tuple[str, str]],
    level: Level = S,
    *,
    study: str | None = None,
    series: str | None = None,
    max_limit: int = 100,
) -> QidoQuery:
    return parse_qido(
        level,
        "t1",
        params,
        study_instance_uid=study,
        series_instance_uid=series,
        default_limit=10,
        max_limit=max_limit,
    )


def key(params: list[tuple[str, str]], level: Level = S) -> MatchingKey:
    (k,) = parse(params, level).matching_keys
    return k


def rejects(
    params: list[tuple[str, str]],
    *words: str,
    level: Level = S,
    study: str | None = None,
    series: str | None = None,
) -> str:
    with pytest.raises(InvalidQuery) as info:
        parse(params, level, study=study, series=series)
    reason: str = info.value.reason
    for word in words:
        assert word in reason, reason
    return reason


# --- defaults and control parameters ---------------------------------------------


def test_defaults() -> None:
    q = parse([])
    assert q == QidoQuery(S, "t1", limit=10, offset=0)
    assert not q.include_all and not q.fuzzy_matching and q.matching_keys == ()


def test_limit_offset() -> None:
    q = parse([("limit", "5"), ("offset", "20")])
    assert (q.limit, q.offset) == (5, 20)
    assert parse([("limit", "0")]).limit == 0
    assert parse([("limit", "100")]).limit == 100


@pytest.mark.parametrize("name", ["limit", "offset"])
@pytest.mark.parametrize("value", ["-1", "abc", "", "1.5", "+3", " 3", "1e3", "٣"])
def test_limit_offset_must_be_non_negative_integers(name: str, value: str) -> None:
    rejects([(name, value)], name, "non-negative integer")


def test_limit_above_maximum_is_refused() -> None:
    rejects([("limit", "101")], "limit=101", "maximum of 100")


def test_control_parameters_once() -> None:
    rejects([("limit", "1"), ("limit", "2")], "limit", "more than once")
    rejects([("offset", "1"), ("offset", "2")], "offset", "more than once")
    rejects([("fuzzymatching", "true"), ("fuzzymatching", "true")], "more than once")


def test_fuzzymatching() -> None:
    assert parse([("fuzzymatching", "true")]).fuzzy_matching
    assert not parse([("fuzzymatching", "false")]).fuzzy_matching
    rejects([("fuzzymatching", "yes")], "fuzzymatching", "true or false")


def test_includefield_repeated_and_comma_separated() -> None:
    q = parse([("includefield", "00081030,PatientAge"), ("includefield", "StudyID")])
    assert q.include_fields == tuple(sorted([0x00081030, 0x00101010, 0x00200010]))
    assert not q.include_all
    q = parse([("includefield", "all"), ("includefield", "PatientAge")])
    assert q.include_all and q.include_fields == (0x00101010,)


def test_includefield_of_valid_attribute_not_held_is_accepted() -> None:
    q = parse([("includefield", "StationName")])
    assert q.include_fields == (0x00081010,)
    assert "00081010" in return_tags(q)


@pytest.mark.parametrize(
    "value,words",
    [
        ("NoSuchKeyword", ["unknown", "NoSuchKeyword"]),
        ("00991234", ["unknown attribute", "00991234"]),
        ("PatientID,,StudyID", ["empty item"]),
        ("0040A730.0040A040", ["sequence"]),
    ],
)
def test_includefield_errors(value: str, words: list[str]) -> None:
    rejects([("includefield", value)], *words)


# --- keys -------------------------------------------------------------------------


def test_keyword_and_tag_name_the_same_key() -> None:
    assert key([("PatientID", "X")]) == key([("00100020", "X")]) == key([("00100020", "X")])
    assert key([("0020000d", STUDY)]).attribute is BY_KEYWORD["StudyInstanceUID"]


def test_unknown_keyword_or_tag() -> None:
    rejects([("PatientNam", "x")], "unknown", "PatientNam")
    rejects([("FFFF1234", "x")], "unknown attribute", "FFFF1234")
    rejects([("includeField", "PatientID")], "unknown", "includeField")
    rejects([("count", "1")], "unknown", "count")


def test_sequence_path_refused() -> None:
    rejects([("RequestAttributesSequence.ScheduledProcedureStepID", "1")], "sequence")
    rejects([("00400275.00400009", "1")], "sequence")


def test_key_given_twice() -> None:
    rejects([("PatientID", "a"), ("00100020", "b")], "PatientID", "more than once")


def test_valid_attribute_not_supported_at_level_names_level_and_keys() -> None:
    reason = rejects([("StationName", "X")], "StationName", "/studies", "STUDY", "PatientID")
    assert "supported keys" in reason
    rejects([("Modality", "CT")], "Modality", "/studies")
    rejects([("NumberOfStudyRelatedSeries", "1")], "NumberOfStudyRelatedSeries")
    rejects([("ImageType", "ORIGINAL")], "ImageType", level=IN)


@pytest.mark.parametrize(
    "level,study,series,allowed,refused",
    [
        (S, None, None, ["PatientName", "StudyDate", "ModalitiesInStudy"], ["Modality"]),
        (SE, None, None, ["PatientName", "StudyDate", "Modality"], ["SOPInstanceUID"]),
        (SE, STUDY, None, ["Modality", "SeriesInstanceUID"], ["PatientName", "StudyInstanceUID"]),
        (IN, None, None, ["PatientID", "Modality", "SOPClassUID"], ["StationName"]),
        (IN, STUDY, None, ["Modality", "InstanceNumber"], ["PatientID", "StudyInstanceUID"]),
        (IN, STUDY, SERIES, ["SOPInstanceUID", "Rows"], ["Modality", "SeriesInstanceUID"]),
    ],
)
def test_keys_per_resource(
    level: Level, study: str | None, series: str | None, allowed: list[str], refused: list[str]
) -> None:
    values = {
        "PatientName": "A",
        "StudyDate": "20200101",
        "ModalitiesInStudy": "CT",
        "Modality": "CT",
        "SeriesInstanceUID": SERIES,
        "PatientID": "P",
        "SOPClassUID": "1.2",
        "InstanceNumber": "1",
        "SOPInstanceUID": "1.5",
        "Rows": "512",
        "StudyInstanceUID": STUDY,
        "StationName": "S",
    }
    for keyword in allowed:
        parse([(keyword, values[keyword])], level, study=study, series=series)
    for keyword in refused:
        rejects(
            [(keyword, values[keyword])],
            keyword,
            "not supported",
            level=level,
            study=study,
            series=series,
        )


def test_path_uids_are_validated() -> None:
    with pytest.raises(InvalidInput):
        parse([], SE, study="1.2.x")
    with pytest.raises(InvalidInput):
        parse([], IN, study=STUDY, series="..")


# --- matching kinds ------------------------------------------------------------------


def test_universal_matching() -> None:
    assert key([("PatientName", "")]) == MatchingKey(BY_KEYWORD["PatientName"], Matching.UNIVERSAL)
    assert key([("PatientID", "*")]).matching is Matching.UNIVERSAL
    assert key([("StudyDate", "")]).matching is Matching.UNIVERSAL
    q = parse([("StudyDescription", "")])
    assert "00081030" in return_tags(q)


def test_single_value() -> None:
    k = key([("PatientID", " ABC ")])
    assert (k.matching, k.values) == (Matching.SINGLE_VALUE, ("ABC",))
    assert key([("StudyDate", "20200229")]).values == ("20200229",)
    assert key([("StudyTime", "1230")]).matching is Matching.SINGLE_VALUE
    assert key([("InstanceNumber", "12")], IN).values == ("12",)


def test_uid_list() -> None:
    k = key([("StudyInstanceUID", "1.2.3\\1.2.4")])
    assert (k.matching, k.values) == (Matching.LIST, ("1.2.3", "1.2.4"))
    k = key([("ModalitiesInStudy", "CT\\MR")])
    assert (k.matching, k.values) == (Matching.LIST, ("CT", "MR"))
    # PS3.18 §8.3.4.1: a comma separates the values too (what Orthanc and OHIF send)
    k = key([("SOPInstanceUID", "1.2.3,1.2.4\\1.2.5")], IN)
    assert (k.matching, k.values) == (Matching.LIST, ("1.2.3", "1.2.4", "1.2.5"))
    assert key([("ModalitiesInStudy", "CT,MR")]).values == ("CT", "MR")
    assert key([("PatientID", "A,B")]).values == ("A,B",)  # a comma in a LO value is just a character


def test_wildcards() -> None:
    k = key([("PatientName", "Do*^J?hn")])
    assert (k.matching, k.values) == (Matching.WILDCARD, ("Do*^J?hn",))
    assert key([("AccessionNumber", "A?1*")]).matching is Matching.WILDCARD
    assert key([("ModalitiesInStudy", "C*")]).matching is Matching.WILDCARD


def test_hyphen_in_a_string_is_literal() -> None:
    k = key([("AccessionNumber", "ACC-1")])
    assert (k.matching, k.values) == (Matching.SINGLE_VALUE, ("ACC-1",))


@pytest.mark.parametrize(
    "value,low,high",
    [
        ("20200101-20201231", "20200101", "20201231"),
        ("-20201231", "", "20201231"),
        ("20200101-", "20200101", ""),
        ("20200101-20200101", "20200101", "20200101"),
    ],
)
def test_date_ranges(value: str, low: str, high: str) -> None:
    k = key([("StudyDate", value)])
    assert (k.matching, k.values) == (Matching.RANGE, (low, high))


def test_time_ranges() -> None:
    assert key([("StudyTime", "0800-120000.5")]).values == ("0800", "120000.5")
    assert key([("StudyTime", "-10")]).values == ("", "10")


@pytest.mark.parametrize(
    "params,words",
    [
        ([("StudyDate", "20201345")], ["StudyDate", "not a valid date"]),
        ([("StudyDate", "2020-13-01")], ["StudyDate", "range"]),
        ([("StudyDate", "202001")], ["StudyDate", "YYYYMMDD"]),
        ([("StudyDate", "20200101-20191231")], ["starts after it ends"]),
        ([("StudyDate", "-")], ["at least one end"]),
        ([("StudyDate", "2020*")], ["wildcard", "DA"]),
        ([("StudyDate", "20200101\\20200102")], ["list matching", "DA"]),
        ([("StudyTime", "2500")], ["StudyTime", "TM"]),
        ([("StudyTime", "12:00")], ["StudyTime", "TM"]),
        ([("StudyTime", "1230-1200")], ["starts after it ends"]),
        ([("StudyInstanceUID", "1.2.abc")], ["StudyInstanceUID", "not a UID"]),
        ([("StudyInstanceUID", "1.2.*")], ["wildcard", "UI"]),
        ([("StudyInstanceUID", "1.2\\\\1.3")], ["empty item"]),
        ([("StudyInstanceUID", "1." + "1" * 70)], ["64"]),
        ([("ModalitiesInStudy", "ct")], ["CS"]),
        ([("ModalitiesInStudy", "C*\\MR")], ["wildcards", "list"]),
        ([("PatientID", "A\\B")], ["list matching", "LO"]),
        ([("PatientID", "a\x00b")], ["control characters"]),
        ([("PatientID", "x" * 2000)], ["longer than"]),
    ],
)
def test_malformed_values(params: list[tuple[str, str]], words: list[str]) -> None:
    rejects(params, *words)


@pytest.mark.parametrize(
    "keyword,value,words",
    [
        ("InstanceNumber", "abc", ["InstanceNumber", "integer"]),
        ("InstanceNumber", "1*", ["wildcard", "IS"]),
        ("InstanceNumber", "1-5", ["range matching applies to DA and TM"]),
        ("Rows", "70000", ["Rows", "US"]),
        ("Rows", "-1", ["Rows", "US"]),
        ("Rows", "1\\2", ["list matching"]),
    ],
)
def test_malformed_numbers(keyword: str, value: str, words: list[str]) -> None:
    rejects([(keyword, value)], *words, level=IN)


# --- return set -------------------------------------------------------------------


def test_return_tags_include_defaults_keys_fields_and_uids() -> None:
    q = parse([("SeriesDescription", "x"), ("includefield", "StationName")], SE, study=STUDY)
    tags = return_tags(q)
    assert {"0020000D", "0020000E", "0008103E", "00081010", "00080060"} <= tags
    assert "00100010" not in tags  # study attributes: not at /studies/{s}/series
    assert "00100010" in return_tags(parse([], SE))  # but at /series


# --- round trip -----------------------------------------------------------------------

_DIGITS = st.text(string.digits, min_size=1, max_size=6).map(lambda s: s.lstrip("0") or "0")
_UID = st.lists(_DIGITS, min_size=2, max_size=6).map(".".join)
_DATE = st.dates().filter(lambda d: d.year >= 1000).map(lambda d: d.strftime("%Y%m%d"))
_TIME = st.sampled_from(["08", "0830", "083015", "083015.5", "235959.123456", "00"])
_WORD = (
    st.text(string.ascii_letters + string.digits + "^=-_% '", min_size=1, max_size=12)
    .map(lambda s: s.strip(" "))
    .filter(lambda s: s != "" and set(s) != {"*"})
)
_CS = st.text(string.ascii_uppercase + string.digits + "_", min_size=1, max_size=8)


def _value(keyword: str) -> st.SearchStrategy[str]:
    vr = BY_KEYWORD[keyword].vr
    if vr == "UI":
        return st.one_of(_UID, st.lists(_UID, min_size=2, max_size=3).map("\\".join))
    if vr in ("DA", "TM"):
        one = _DATE if vr == "DA" else _TIME
        return st.one_of(
            one,
            st.just(""),
            st.tuples(one, one).map(lambda t: "-".join(sorted(t) if vr == "DA" else t)),
            one.map(lambda v: "-" + v),
            one.map(lambda v: v + "-"),
        )
    if vr in ("IS", "US"):
        return st.integers(0, 60000).map(str)
    if vr == "CS":
        return st.one_of(_CS, _CS.map(lambda v: v[:-1] + "*"))
    return st.one_of(_WORD, _WORD.map(lambda v: v + "*"), _WORD.map(lambda v: "?" + v), st.just(""))


@st.composite
def queries(draw: st.DrawFn) -> QidoQuery:
    level = draw(st.sampled_from([S, SE, IN]))
    study = draw(st.sampled_from([None, STUDY])) if level is not S else None
    series = draw(st.sampled_from([None, SERIES])) if level is IN and study else None
    keys = supported_keys(level, study is not None, series is not None)
    keywords = draw(
        st.lists(st.sampled_from(sorted(a.keyword for a in keys.values())), unique=True, max_size=5)
    )
    params = [(k, draw(_value(k))) for k in keywords]
    fields = draw(
        st.lists(st.sampled_from(["PatientAge", "00081010", "StudyID", "all"]), max_size=3)
    )
    params += [("includefield", ",".join(fields))] if fields else []
    if draw(st.booleans()):
        params.append(("fuzzymatching", draw(st.sampled_from(["true", "false"]))))
    if draw(st.booleans()):
        params.append(("limit", str(draw(st.integers(0, 100)))))
    if draw(st.booleans()):
        params.append(("offset", str(draw(st.integers(0, 10**9)))))
    tm_ranges_ok = all(
        not (BY_KEYWORD[k].vr == "TM" and "-" in v.strip("-") and _tm_reversed(v))
        for k, v in params
        if k in BY_KEYWORD
    )
    if not tm_ranges_ok:
        params = [p for p in params if p[0] not in BY_KEYWORD or BY_KEYWORD[p[0]].vr != "TM"]
    return parse(params, level, study=study, series=series)


def _tm_reversed(value: str) -> bool:
    low, high = value.split("-")
    norm = [
        v.partition(".")[0].ljust(6, "0") + "." + v.partition(".")[2].ljust(6, "0")
        for v in (low, high)
    ]
    return norm[0] > norm[1]


@given(queries())
def test_parse_format_round_trip(query: QidoQuery) -> None:
    again = parse_qido(
        query.level,
        query.tenant_id,
        format_qido(query),
        study_instance_uid=query.study_instance_uid,
        series_instance_uid=query.series_instance_uid,
        default_limit=10,
        max_limit=100,
    )
    assert again == query
