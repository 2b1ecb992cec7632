"""Search (QIDO-RS, PS3.18 §10.6): run a parsed query against the right store and
add each match's Retrieve URL (0008,1190) (PS3.18 Table 10.6.3-3..5).

Studies and series are searched in the index, instances in the warehouse
(ARCHITECTURE §5).
"""

from __future__ import annotations

from typing import Protocol

from dicomcloud.domain.attributes import Level
from dicomcloud.domain.qido import QidoQuery, QidoResult

RetrieveURL = "00081190"


class StudySeriesSearch(Protocol):
    """What this use case needs of the index (a part of ``ports.Index``)."""

    async def search_studies(self, query: QidoQuery) -> QidoResult: ...
    async def search_series(self, query: QidoQuery) -> QidoResult: ...


class InstanceSearch(Protocol):
    """What this use case needs of the warehouse (a part of ``ports.Warehouse``)."""

    async def search_instances(self, query: QidoQuery) -> QidoResult: ...


def _first(match: dict[str, object], tag: str) -> str:
    element = match.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values:
            return str(values[0])
    raise ValueError(f"search result without {tag}")


def retrieve_url(retrieve_base: str, level: Level, match: dict[str, object]) -> str:
    """The WADO-RS URL of a match: ``{base}/studies/{s}[/series/{se}[/instances/{i}]]``."""
    url = f"{retrieve_base}/studies/{_first(match, '0020000D')}"
    if level in (Level.SERIES, Level.INSTANCE):
        url += f"/series/{_first(match, '0020000E')}"
    if level is Level.INSTANCE:
        url += f"/instances/{_first(match, '00080018')}"
    return url


async def search(
    index: StudySeriesSearch,
    warehouse: InstanceSearch,
    query: QidoQuery,
    retrieve_base: str,
) -> QidoResult:
    """The matches of ``query`` (one page) with their Retrieve URLs, and whether more exist."""
    if query.level is Level.STUDY:
        result = await index.search_studies(query)
    elif query.level is Level.SERIES:
        result = await index.search_series(query)
    elif query.level is Level.INSTANCE:
        result = await warehouse.search_instances(query)
    else:
        raise ValueError(f"QIDO-RS has no {query.level.value} level resource")
    base = retrieve_base.rstrip("/")
    matches = []
    for match in result.matches:
        url = {"vr": "UR", "Value": [retrieve_url(base, query.level, match)]}
        matches.append(dict(sorted({**match, RetrieveURL: url}.items())))
    return QidoResult(matches, result.more)
