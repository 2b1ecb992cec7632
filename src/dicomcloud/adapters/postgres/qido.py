"""QIDO-RS searches in PostgreSQL (PS3.18 §10.6; matching per PS3.4 §C.2.2.2).

Studies and series come from ``dicom_index.study`` / ``dicom_index.series``
(a series search always joins its study: it may match on and return study
attributes); instances from the wide ``warehouse.dicom_image_meta``.

Every statement is parameterized: values only ever travel as ``$n``
parameters; identifiers come from the attribute registry and are
double-quoted. The tenant is the first condition of every WHERE clause.
Pages are cut from a stable total order (NULLS LAST) and one row more than
the limit is fetched to tell whether more matches exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import orjson

from dicomcloud.adapters.postgres.pool import Pool
from dicomcloud.adapters.postgres.schema import INDEX, WAREHOUSE
from dicomcloud.domain.attributes import BY_TAG, INSTANCE_RETURN, SERIES_RETURN, STUDY_RETURN, Attribute, Level
from dicomcloud.domain.header import normalize_time
from dicomcloud.domain.qido import (
    INTEGER_VRS,
    Matching,
    MatchingKey,
    ModalitiesInStudy,
    QidoQuery,
    QidoResult,
    query_returned_levels,
    return_tags,
)

JsonDict = dict[str, Any]
_STUDY = (Level.STUDY,)
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]*")

# Computed attributes: tag -> (column, VR, level).
_COMPUTED: dict[str, tuple[str, str, Level]] = {
    "00080061": ("modalities_in_study", "CS", Level.STUDY),
    "00201206": ("number_of_study_related_series", "IS", Level.STUDY),
    "00201208": ("number_of_study_related_instances", "IS", Level.STUDY),
    "00201209": ("number_of_series_related_instances", "IS", Level.SERIES),
}


def _column(alias: str, attr: Attribute) -> str:
    if not _IDENTIFIER.fullmatch(attr.column):  # registry invariant, never user input
        raise ValueError(f"unsafe column name {attr.column!r}")
    return f'{alias}."{attr.column}"'


class _Params:
    """Collects query parameters; returns their ``$n`` placeholders."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _literal(value: str) -> str:
    """``value`` as a LIKE pattern matching itself (escape character ``\\``)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like(value: str) -> str:
    """A PS3.4 C.2.2.2.4 wildcard value (``*``, ``?``) as a LIKE pattern."""
    return _literal(value).replace("*", "%").replace("?", "_")


def _name_condition(col: str, key: MatchingKey, fuzzy: bool, p: _Params) -> str:
    """PN: case-insensitive; fuzzy as documented in :mod:`dicomcloud.domain.qido`."""
    value = key.values[0]
    pattern = _like(value) if key.matching is Matching.WILDCARD else _literal(value)
    if not fuzzy:
        if key.matching is Matching.WILDCARD:
            return f"lower({col}) LIKE lower({p(pattern)})"
        return f"lower({col}) = lower({p(value)})"
    prefix = p(pattern + "%")
    return (
        f"(lower({col}) LIKE lower({prefix}) OR EXISTS (SELECT 1 FROM "
        f"regexp_split_to_table(lower({col}), '[\\^= ]+') AS name_part(part) "
        f"WHERE name_part.part LIKE lower({prefix})))"
    )


def _condition(col: str, key: MatchingKey, fuzzy: bool, p: _Params) -> str | None:
    """SQL for one matching key on column ``col``; None for universal matching."""
    attr = key.attribute
    if key.matching is Matching.UNIVERSAL:
        return None
    if attr.vr == "PN":
        return _name_condition(col, key, fuzzy, p)
    if attr.tag == ModalitiesInStudy:  # text[]: any of the study's modalities matches
        if key.matching is Matching.WILDCARD:
            pattern = p(_like(key.values[0]))
            return f"EXISTS (SELECT 1 FROM unnest({col}) AS m(v) WHERE m.v LIKE {pattern})"
        return f"{col} && {p(list(key.values))}::text[]"
    if key.matching is Matching.LIST:
        return f"{col} = ANY({p(list(key.values))}::text[])"
    if key.matching is Matching.WILDCARD:
        return f"{col} LIKE {p(_like(key.values[0]))}"
    if key.matching is Matching.RANGE:
        low, high = key.values
        parts = []
        if low:
            parts.append(f"{col} >= {p(_bound(attr, low, upper=False))}")
        if high:
            parts.append(f"{col} <= {p(_bound(attr, high, upper=True))}")
        return " AND ".join(parts)
    value = key.values[0]
    if attr.vr in INTEGER_VRS:
        return f"{col} = {p(int(value))}"
    if attr.vr == "TM":
        return f"{col} = {p(normalize_time(value))}"
    return f"{col} = {p(value)}"


def _bound(attr: Attribute, value: str, *, upper: bool) -> str:
    """A range end comparable as text with stored values (TM: HHMMSS[.FFFFFF]).

    A truncated upper time covers its whole span: ``-10`` includes 10:59:59.9.
    """
    if attr.vr != "TM":
        return value
    whole, _, fraction = value.partition(".")
    if not upper:
        return normalize_time(value)
    return whole.ljust(6, "9") + "." + (fraction or "9" * 6)


def _where(query: QidoQuery, p: _Params, alias_of: Callable[[Attribute], str], extra: list[str]) -> str:
    conditions = list(extra)
    for key in query.matching_keys:
        cond = _special(query, key, p)
        if cond is None:
            column = _column(alias_of(key.attribute), key.attribute)
            cond = _condition(column, key, query.fuzzy_matching, p)
        if cond:
            conditions.append(cond)
    return " AND ".join(conditions)


def _special(query: QidoQuery, key: MatchingKey, p: _Params) -> str | None:
    """ModalitiesInStudy at instance level: any instance of the same study (in the
    warehouse) has a matching Modality (PS3.4 C.6.2.1.2)."""
    if query.level is not Level.INSTANCE or key.attribute.tag != ModalitiesInStudy:
        return None
    if key.matching is Matching.UNIVERSAL:
        return ""
    modality = BY_TAG[0x00080060]
    inner = _condition(_column("m", modality), _as(key, modality), False, p)
    return (
        f"EXISTS (SELECT 1 FROM {WAREHOUSE}.dicom_image_meta m WHERE m.tenant_id = i.tenant_id "
        f"AND m.study_instance_uid = i.study_instance_uid AND {inner})"
    )


def _as(key: MatchingKey, attr: Attribute) -> MatchingKey:
    return MatchingKey(attr, key.matching, key.values)


def _page(query: QidoQuery, p: _Params) -> str:
    sql = ""
    if query.limit is not None:
        sql += f" LIMIT {p(query.limit + 1)}"
    if query.offset:
        sql += f" OFFSET {p(query.offset)}"
    return sql


def _json(value: Any) -> JsonDict:
    if value is None:
        return {}
    if isinstance(value, str | bytes):
        loaded: JsonDict = orjson.loads(value)
        return loaded
    return dict(value)


def _computed(row: Mapping[str, Any], levels: tuple[Level, ...]) -> JsonDict:
    out: JsonDict = {}
    for tag, (column, vr, level) in _COMPUTED.items():
        if level not in levels or column not in row:
            continue
        value = row[column]
        if vr == "CS":
            out[tag] = {"vr": "CS", "Value": list(value)} if value else {"vr": "CS"}
        else:
            out[tag] = {"vr": "IS", "Value": [int(value)]}
    return out


def _uid(value: str) -> JsonDict:
    return {"vr": "UI", "Value": [value]}


def _assemble(
    query: QidoQuery,
    row: Mapping[str, Any],
    sources: list[tuple[Level, JsonDict]],
    wanted: frozenset[str] | None = None,
    returned: tuple[Level, ...] | None = None,
) -> JsonDict:
    """One result: the held attributes of each level, filtered to the return set.

    ``wanted`` and ``returned`` depend only on the query: pass them in when
    assembling many rows.
    """
    wanted = return_tags(query) if wanted is None else wanted
    returned = query_returned_levels(query) if returned is None else returned
    result: JsonDict = {}
    for level, attrs in sources:
        everything = query.include_all and level in returned
        for tag, element in attrs.items():
            if everything or tag in wanted:
                result[tag] = element
    result["0020000D"] = _uid(row["study_instance_uid"])
    if query.level is not Level.STUDY:
        result["0020000E"] = _uid(row["series_instance_uid"])
    if query.level is Level.INSTANCE:
        result["00080018"] = _uid(row["sop_instance_uid"])
    return dict(sorted(result.items()))


async def _fetch(pool: Pool, sql: str, args: list[Any]) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
    return rows


def _result(query: QidoQuery, matches: list[JsonDict]) -> QidoResult:
    if query.limit is not None and len(matches) > query.limit:
        return QidoResult(matches[: query.limit], more=True)
    return QidoResult(matches, more=False)


async def search_studies(pool: Pool, query: QidoQuery) -> QidoResult:
    """Search for Studies (PS3.18 §10.6.1, Table 10.6.3-3)."""
    p = _Params()
    where = _where(query, p, lambda a: "st", [f"st.tenant_id = {p(query.tenant_id)}"])
    sql = (
        "SELECT st.study_instance_uid, st.attrs, st.modalities_in_study, "
        "st.number_of_study_related_series, st.number_of_study_related_instances "
        f"FROM {INDEX}.study st WHERE {where} "
        "ORDER BY st.study_date ASC NULLS LAST, st.study_time ASC NULLS LAST, "
        "st.study_instance_uid ASC"
    )
    sql += _page(query, p)
    rows = await _fetch(pool, sql, p.values)
    wanted, returned = return_tags(query), query_returned_levels(query)
    matches = [
        _assemble(query, row, [(Level.STUDY, _json(row["attrs"]) | _computed(row, _STUDY))], wanted, returned)
        for row in rows
    ]
    return _result(query, matches)


def _series_alias(attr: Attribute) -> str:
    return "se" if attr.level is Level.SERIES else "st"


async def search_series(pool: Pool, query: QidoQuery) -> QidoResult:
    """Search for Series (PS3.18 §10.6.1, Table 10.6.3-4): ``/series`` matches on
    and returns study attributes too; ``/studies/{study}/series`` series ones."""
    p = _Params()
    extra = [f"se.tenant_id = {p(query.tenant_id)}"]
    if query.study_instance_uid is not None:
        extra.append(f"se.study_instance_uid = {p(query.study_instance_uid)}")
    where = _where(query, p, _series_alias, extra)
    sql = (
        "SELECT se.study_instance_uid, se.series_instance_uid, se.attrs AS series_attrs, "
        "se.number_of_series_related_instances, st.attrs AS study_attrs, "
        "st.modalities_in_study, st.number_of_study_related_series, "
        "st.number_of_study_related_instances "
        f"FROM {INDEX}.series se LEFT JOIN {INDEX}.study st "
        "ON st.tenant_id = se.tenant_id AND st.study_instance_uid = se.study_instance_uid "
        f"WHERE {where} "
        "ORDER BY se.series_number ASC NULLS LAST, se.series_instance_uid ASC, "
        "se.study_instance_uid ASC"
    )
    sql += _page(query, p)
    rows = await _fetch(pool, sql, p.values)
    wanted, returned = return_tags(query), query_returned_levels(query)
    matches = []
    for row in rows:
        study = _json(row["study_attrs"])
        if row["number_of_study_related_series"] is not None:
            study |= _computed(row, _STUDY)
        series = _json(row["series_attrs"]) | _computed(row, (Level.SERIES,))
        matches.append(_assemble(query, row, [(Level.STUDY, study), (Level.SERIES, series)], wanted, returned))
    return _result(query, matches)


async def search_instances(pool: Pool, query: QidoQuery) -> QidoResult:
    """Search for Instances (PS3.18 §10.6.1, Table 10.6.3-5) in the warehouse:
    ``/instances`` returns study, series and instance attributes,
    ``/studies/{study}/instances`` series and instance ones, and
    ``/studies/{study}/series/{series}/instances`` instance ones.
    Computed study/series counts are not kept per instance and are not returned."""
    p = _Params()
    extra = [f"i.tenant_id = {p(query.tenant_id)}"]
    if query.study_instance_uid is not None:
        extra.append(f"i.study_instance_uid = {p(query.study_instance_uid)}")
    if query.series_instance_uid is not None:
        extra.append(f"i.series_instance_uid = {p(query.series_instance_uid)}")
    where = _where(query, p, lambda a: "i", extra)
    wanted = return_tags(query)
    returned = query_returned_levels(query)
    # Fetch only the levels whose attributes can be in the answer.
    levels = [
        level
        for level in (Level.STUDY, Level.SERIES, Level.INSTANCE)
        if (query.include_all and level in returned) or not wanted.isdisjoint(_LEVEL_TAGS[level])
    ]
    columns = "".join(f", i.{_ATTRS_COLUMN[level]}" for level in levels)
    sql = (
        f"SELECT i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid{columns} "
        f"FROM {WAREHOUSE}.dicom_image_meta i WHERE {where} "
        "ORDER BY i.instance_number ASC NULLS LAST, i.sop_instance_uid ASC, "
        "i.series_instance_uid ASC, i.study_instance_uid ASC"
    )
    sql += _page(query, p)
    rows = await _fetch(pool, sql, p.values)
    matches = [
        _assemble(
            query,
            row,
            [(level, _json(row[_ATTRS_COLUMN[level]])) for level in levels],
            wanted,
            returned,
        )
        for row in rows
    ]
    return _result(query, matches)


_ATTRS_COLUMN = {Level.STUDY: "study_attrs", Level.SERIES: "series_attrs", Level.INSTANCE: "instance_attrs"}
_ROW_UIDS = frozenset({"0020000D", "0020000E", "00080018"})  # set from key columns
_LEVEL_TAGS = {
    Level.STUDY: frozenset(a.tag_hex for a in STUDY_RETURN) - _ROW_UIDS,
    Level.SERIES: frozenset(a.tag_hex for a in SERIES_RETURN) - _ROW_UIDS,
    Level.INSTANCE: frozenset(a.tag_hex for a in INSTANCE_RETURN) - _ROW_UIDS,
}
