"""QIDO-RS against a real PostgreSQL: every matching kind of PS3.4 §C.2.2.2, paging,
return sets (PS3.18 Tables 10.6.3-3..5), tenant isolation — and the HTTP routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from pydicom.dataset import Dataset
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount

from dicomcloud.adapters.postgres import qido as pg
from dicomcloud.adapters.postgres.pool import create_pool
from dicomcloud.adapters.postgres.schema import INDEX, WAREHOUSE, migrate
from dicomcloud.domain.attributes import STORED_INSTANCE, STORED_SERIES, STORED_STUDY, Level
from dicomcloud.domain.header import InstanceRecord
from dicomcloud.domain.qido import QidoQuery, QidoResult, parse_qido
from dicomcloud.entrypoints.http.qido import routes
from dicomcloud.errors import DicomCloudError, http_status
from dicomcloud.settings import Settings
from dicomcloud.usecases.read_cache import ReadCache
from dicomcloud.usecases.search import search

pytestmark = pytest.mark.integration

A, B, C, D = "1.2.826.1.1", "1.2.826.1.2", "1.2.826.1.3", "1.2.826.1.4"
INJECTION = "x' OR '1'='1"
_KEYS = {"tenant_id", "patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid"}


def dataset(study: str, series: str, sop: str, **attrs: Any) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _j(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


def _quoted(name: str) -> str:
    return '"' + name + '"'


def _cols(attrs: tuple[Any, ...], skip: set[str]) -> list[str]:
    return [a.column for a in attrs if a.column not in skip]


async def insert(conn: asyncpg.Connection, tenant: str, ds: Dataset) -> None:
    """Index and warehouse rows for one instance, as schema.py lays them out."""
    r = InstanceRecord.from_dataset(ds, tenant, "1.2.840.10008.1.2.1")
    k = r.key
    study_cols = _cols(STORED_STUDY, _KEYS)
    await conn.execute(
        f"INSERT INTO {INDEX}.study (tenant_id, study_instance_uid, patient_id, "
        + "".join(f'"{c}", ' for c in study_cols)
        + "attrs) VALUES ($1, $2, $3, "
        + "".join(f"${i + 4}, " for i in range(len(study_cols)))
        + f"${len(study_cols) + 4}) ON CONFLICT DO NOTHING",
        k.tenant_id,
        k.study_instance_uid,
        r.patient_id,
        *[r.study_values.get(c) for c in study_cols],
        _j(r.study),
    )
    series_cols = _cols(STORED_SERIES, _KEYS)
    await conn.execute(
        f"INSERT INTO {INDEX}.series (tenant_id, study_instance_uid, series_instance_uid, "
        + "".join(f'"{c}", ' for c in series_cols)
        + "attrs) VALUES ($1, $2, $3, "
        + "".join(f"${i + 4}, " for i in range(len(series_cols)))
        + f"${len(series_cols) + 4}) ON CONFLICT DO NOTHING",
        k.tenant_id,
        k.study_instance_uid,
        k.series_instance_uid,
        *[r.series_values.get(c) for c in series_cols],
        _j(r.series),
    )
    await conn.execute(
        f"INSERT INTO {INDEX}.instance VALUES ($1, $2, $3, $4, $5)",
        k.tenant_id,
        k.study_instance_uid,
        k.series_instance_uid,
        k.sop_instance_uid,
        r.instance_values.get("instance_number"),
    )
    values = {**r.study_values, **r.series_values, **r.instance_values}
    cols = _cols(STORED_STUDY + STORED_SERIES + STORED_INSTANCE, _KEYS | {"sop_class_uid"})
    fixed = [
        "tenant_id",
        "study_instance_uid",
        "series_instance_uid",
        "sop_instance_uid",
        "sop_class_uid",
        "transfer_syntax_uid",
        "patient_id",
        "file_path",
        "file_size",
        "received_at",
    ]
    names = fixed + cols + ["study_attrs", "series_attrs", "instance_attrs"]
    await conn.execute(
        f"INSERT INTO {WAREHOUSE}.dicom_image_meta ({', '.join(map(_quoted, names))}) "
        f"VALUES ({', '.join(f'${i + 1}' for i in range(len(names)))})",
        k.tenant_id,
        k.study_instance_uid,
        k.series_instance_uid,
        k.sop_instance_uid,
        r.sop_class_uid,
        r.transfer_syntax_uid,
        r.patient_id,
        "f.dcm",
        1,
        datetime.now(UTC),
        *[values.get(c) for c in cols],
        _j(r.study),
        _j(r.series),
        _j(r.instance),
    )


async def update_counts(conn: asyncpg.Connection) -> None:
    await conn.execute(
        f"""UPDATE {INDEX}.series s SET number_of_series_related_instances = (
              SELECT count(*) FROM {INDEX}.instance i WHERE i.tenant_id = s.tenant_id
              AND i.series_instance_uid = s.series_instance_uid)"""
    )
    await conn.execute(
        f"""UPDATE {INDEX}.study st SET
              number_of_study_related_series = (SELECT count(*) FROM {INDEX}.series s
                WHERE s.tenant_id = st.tenant_id AND s.study_instance_uid = st.study_instance_uid),
              number_of_study_related_instances = (SELECT count(*) FROM {INDEX}.instance i
                WHERE i.tenant_id = st.tenant_id AND i.study_instance_uid = st.study_instance_uid),
              modalities_in_study = (SELECT coalesce(array_agg(DISTINCT modality), '{{}}')
                FROM {INDEX}.series s WHERE s.tenant_id = st.tenant_id
                AND s.study_instance_uid = st.study_instance_uid)"""
    )


PATIENTS = {
    A: dict(
        PatientName="Doe^John",
        PatientID="P1",
        StudyDate="20200115",
        StudyTime="083000",
        AccessionNumber="ACC-1",
        StudyDescription="CT Chest",
    ),
    B: dict(
        PatientName="Smith^Jane Mary",
        PatientID="P2",
        StudyDate="20210610",
        StudyTime="120000",
        AccessionNumber="ACC-2",
        StudyDescription="MR Brain",
    ),
    C: dict(
        PatientName="O'Brien^Sean",
        PatientID=INJECTION,
        StudyDate="20191231",
        AccessionNumber="ACC%3",
    ),
    D: dict(PatientName="jones^ann", PatientID="P4"),
}
# (study, series uid, modality, series number, instance numbers)
SERIES = [
    (A, A + ".1", "CT", 1, [3, 1, 2]),
    (A, A + ".2", "MR", 2, [1]),
    (B, B + ".1", "MR", 1, [2, 1]),
    (C, C + ".1", "US", 1, [1]),
    (D, D + ".1", "CT", None, [1]),
]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        for study, series, modality, number, instances in SERIES:
            for n in instances:
                extra = {"SeriesNumber": number} if number is not None else {}
                await insert(
                    conn,
                    "t1",
                    dataset(
                        study,
                        series,
                        f"{series}.{n}",
                        Modality=modality,
                        InstanceNumber=n,
                        Rows=512,
                        **extra,
                        **PATIENTS[study],
                    ),
                )
        # Tenant t2 reuses study A's UIDs with another patient.
        await insert(
            conn,
            "t2",
            dataset(
                A,
                A + ".1",
                A + ".1.1",
                Modality="CT",
                PatientName="Other^Tenant",
                PatientID="P1",
                StudyDate="20200115",
                InstanceNumber=1,
            ),
        )
        await update_counts(conn)
    finally:
        await conn.close()
    p = await create_pool(database_url, min_size=1, max_size=2)
    try:
        yield p
    finally:
        await p.close()


def q(
    level: Level,
    params: list[tuple[str, str]],
    tenant: str = "t1",
    study: str | None = None,
    series: str | None = None,
) -> QidoQuery:
    return parse_qido(
        level,
        tenant,
        params,
        study_instance_uid=study,
        series_instance_uid=series,
        default_limit=100,
        max_limit=1000,
    )


def first(match: dict[str, Any], tag: str) -> Any:
    return match[tag]["Value"][0]


async def studies(pool: Any, params: list[tuple[str, str]], tenant: str = "t1") -> list[str]:
    result = await pg.search_studies(pool, q(Level.STUDY, params, tenant))
    return [first(m, "0020000D") for m in result.matches]


# --- matching kinds (studies) -----------------------------------------------------


async def test_universal_and_order(pool: Any) -> None:
    # study_date, study_time, uid; NULLS LAST
    assert await studies(pool, []) == [C, A, B, D]
    assert await studies(pool, [("PatientName", "")]) == [C, A, B, D]


async def test_single_value(pool: Any) -> None:
    assert await studies(pool, [("PatientID", "P2")]) == [B]
    assert await studies(pool, [("StudyDate", "20210610")]) == [B]
    assert await studies(pool, [("StudyTime", "0830")]) == [A]
    assert await studies(pool, [("AccessionNumber", "ACC-1")]) == [A]
    assert await studies(pool, [("PatientID", "p2")]) == []  # LO: case-sensitive


async def test_uid_list(pool: Any) -> None:
    assert await studies(pool, [("StudyInstanceUID", f"{B}\\{A}\\1.2.3")]) == [A, B]
    assert await studies(pool, [("StudyInstanceUID", A)]) == [A]


async def test_wildcards(pool: Any) -> None:
    assert await studies(pool, [("PatientName", "do*")]) == [A]
    assert await studies(pool, [("PatientName", "?MITH*")]) == [B]
    assert await studies(pool, [("AccessionNumber", "ACC-?")]) == [A, B]
    assert await studies(pool, [("AccessionNumber", "ACC%*")]) == [C]  # % is literal
    assert await studies(pool, [("StudyDescription", "*Brain")]) == [B]


async def test_date_ranges(pool: Any) -> None:
    assert await studies(pool, [("StudyDate", "20200101-20201231")]) == [A]
    assert await studies(pool, [("StudyDate", "20191231-20200115")]) == [C, A]
    assert await studies(pool, [("StudyDate", "-20200101")]) == [C]
    assert await studies(pool, [("StudyDate", "20210101-")]) == [B]


async def test_time_ranges(pool: Any) -> None:
    assert await studies(pool, [("StudyTime", "0800-0900")]) == [A]
    assert await studies(pool, [("StudyTime", "-12")]) == [A, B]  # 12 covers 12:59:59
    assert await studies(pool, [("StudyTime", "1200-")]) == [B]


async def test_patient_name_case_insensitive(pool: Any) -> None:
    assert await studies(pool, [("PatientName", "DOE^JOHN")]) == [A]
    assert await studies(pool, [("PatientName", "Jones^Ann")]) == [D]
    assert await studies(pool, [("PatientName", "jan")]) == []


async def test_fuzzy_patient_name(pool: Any) -> None:
    fuzzy = ("fuzzymatching", "true")
    assert await studies(pool, [("PatientName", "jan"), fuzzy]) == [B]
    assert await studies(pool, [("PatientName", "MAR"), fuzzy]) == [B]
    assert await studies(pool, [("PatientName", "jo"), fuzzy]) == [A, D]
    assert await studies(pool, [("PatientName", "smith^j"), fuzzy]) == [B]
    assert await studies(pool, [("PatientName", "s?an"), fuzzy]) == [C]
    assert await studies(pool, [("PatientName", "ohn"), fuzzy]) == []


async def test_modalities_in_study(pool: Any) -> None:
    assert await studies(pool, [("ModalitiesInStudy", "MR")]) == [A, B]
    assert await studies(pool, [("ModalitiesInStudy", "US\\CT")]) == [C, A, D]
    assert await studies(pool, [("ModalitiesInStudy", "M*")]) == [A, B]
    assert await studies(pool, [("ModalitiesInStudy", "XA")]) == []


async def test_injection_looking_values_are_plain_values(pool: Any) -> None:
    assert await studies(pool, [("PatientID", INJECTION)]) == [C]
    assert await studies(pool, [("PatientName", "' OR 1=1 --")]) == []
    assert await studies(pool, [("PatientID", "'; DROP TABLE dicom_index.study; --")]) == []
    assert await studies(pool, [("PatientName", "%")]) == []
    assert await studies(pool, [("PatientName", "%"), ("fuzzymatching", "true")]) == []
    assert await studies(pool, [("StudyDescription", "_T Chest")]) == []
    assert len(await studies(pool, [])) == 4  # the table is still there


# --- paging ------------------------------------------------------------------------


async def test_limit_offset_paging_is_stable(pool: Any) -> None:
    pages = []
    for offset in (0, 2, 4):
        r = await pg.search_studies(pool, q(Level.STUDY, [("limit", "2"), ("offset", str(offset))]))
        pages.append(([first(m, "0020000D") for m in r.matches], r.more))
    assert pages == [([C, A], True), ([B, D], False), ([], False)]
    r = await pg.search_studies(pool, q(Level.STUDY, [("limit", "4")]))
    assert len(r.matches) == 4 and not r.more
    r = await pg.search_studies(pool, q(Level.STUDY, [("limit", "0")]))
    assert r.matches == [] and r.more


# --- return sets -----------------------------------------------------------------------


async def test_study_result_attributes(pool: Any) -> None:
    (m,) = (await pg.search_studies(pool, q(Level.STUDY, [("StudyInstanceUID", A)]))).matches
    assert list(m) == sorted(m)
    assert first(m, "00100010") == {"Alphabetic": "Doe^John"}
    assert m["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert m["00201206"] == {"vr": "IS", "Value": [2]}
    assert m["00201208"] == {"vr": "IS", "Value": [4]}
    assert "0020000E" not in m and "00080060" not in m
    r = await pg.search_studies(pool, q(Level.STUDY, [("includefield", "StationName,all")]))
    assert all("00081010" not in m for m in r.matches)  # valid, not held: absent


async def test_series(pool: Any) -> None:
    r = await pg.search_series(pool, q(Level.SERIES, [("Modality", "CT")]))
    assert [first(m, "0020000E") for m in r.matches] == [A + ".1", D + ".1"]
    m = r.matches[0]
    assert first(m, "0020000D") == A and first(m, "00201209") == 3
    assert first(m, "00100010") == {"Alphabetic": "Doe^John"}  # /series: study attributes too
    r = await pg.search_series(pool, q(Level.SERIES, [("PatientID", "P2")]))
    assert [first(m, "0020000E") for m in r.matches] == [B + ".1"]
    r = await pg.search_series(
        pool, q(Level.SERIES, [("StudyDate", "-20200201"), ("Modality", "MR")])
    )
    assert [first(m, "0020000E") for m in r.matches] == [A + ".2"]


async def test_series_in_study(pool: Any) -> None:
    r = await pg.search_series(pool, q(Level.SERIES, [], study=A))
    assert [first(m, "0020000E") for m in r.matches] == [A + ".1", A + ".2"]
    assert all("00100010" not in m and first(m, "0020000D") == A for m in r.matches)
    r = await pg.search_series(pool, q(Level.SERIES, [("includefield", "PatientName")], study=A))
    assert first(r.matches[0], "00100010") == {"Alphabetic": "Doe^John"}
    r = await pg.search_series(pool, q(Level.SERIES, [("Modality", "MR")], study=A))
    assert [first(m, "0020000E") for m in r.matches] == [A + ".2"]
    r = await pg.search_series(pool, q(Level.SERIES, [("SeriesNumber", "2")], study=B))
    assert r.matches == []


async def test_instances(pool: Any) -> None:
    r = await pg.search_instances(pool, q(Level.INSTANCE, [("PatientID", "P1")]))
    sops = [first(m, "00080018") for m in r.matches]
    assert sops == [A + ".1.1", A + ".2.1", A + ".1.2", A + ".1.3"]
    m = r.matches[0]
    assert first(m, "0020000D") == A and first(m, "0020000E") == A + ".1"
    assert first(m, "00100010") == {"Alphabetic": "Doe^John"}  # /instances: study attrs
    assert first(m, "00080060") == "CT" and first(m, "00200013") == 1
    r = await pg.search_instances(pool, q(Level.INSTANCE, [("InstanceNumber", "2")]))
    assert [first(m, "00080018") for m in r.matches] == [A + ".1.2", B + ".1.2"]
    r = await pg.search_instances(pool, q(Level.INSTANCE, [("ModalitiesInStudy", "US")]))
    assert [first(m, "00080018") for m in r.matches] == [C + ".1.1"]
    r = await pg.search_instances(pool, q(Level.INSTANCE, [("ModalitiesInStudy", "MR\\US")]))
    assert {first(m, "0020000D") for m in r.matches} == {A, B, C}


async def test_instances_in_study_and_series(pool: Any) -> None:
    r = await pg.search_instances(pool, q(Level.INSTANCE, [("Modality", "CT")], study=A))
    assert [first(m, "00080018") for m in r.matches] == [A + ".1.1", A + ".1.2", A + ".1.3"]
    m = r.matches[0]
    assert "00100010" not in m and first(m, "00080060") == "CT"  # series attrs, no study
    r = await pg.search_instances(pool, q(Level.INSTANCE, [], study=A, series=A + ".1"))
    m = r.matches[0]
    assert "00080060" not in m and first(m, "00280010") == 512
    assert first(m, "0020000E") == A + ".1"
    r = await pg.search_instances(
        pool, q(Level.INSTANCE, [("includefield", "all"), ("limit", "1")], study=A, series=A + ".1")
    )
    assert r.more and "00080060" not in r.matches[0] and "00080016" in r.matches[0]
    r = await pg.search_instances(
        pool,
        q(Level.INSTANCE, [("includefield", "PatientName,00080060")], study=A, series=A + ".1"),
    )
    assert "00100010" in r.matches[0] and "00080060" in r.matches[0]


# --- tenants ------------------------------------------------------------------------------


async def test_tenants_never_see_each_other(pool: Any) -> None:
    assert await studies(pool, [], "t2") == [A]
    (m,) = (await pg.search_studies(pool, q(Level.STUDY, [("PatientID", "P1")], "t2"))).matches
    assert first(m, "00100010") == {"Alphabetic": "Other^Tenant"}
    assert m["00201208"]["Value"] == [1]
    assert await studies(pool, [("PatientName", "Other*")], "t1") == []
    assert await studies(pool, [], "t3") == []
    r = await pg.search_series(pool, q(Level.SERIES, [], "t2", study=A))
    assert len(r.matches) == 1
    r = await pg.search_instances(pool, q(Level.INSTANCE, [], "t2", study=A))
    assert [first(m, "00080018") for m in r.matches] == [A + ".1.1"]
    r = await pg.search_instances(pool, q(Level.INSTANCE, [("ModalitiesInStudy", "MR")], "t2"))
    assert r.matches == []


# --- use case and HTTP ------------------------------------------------------------------


@dataclass
class _Index:
    pool: Any

    async def search_studies(self, query: QidoQuery) -> QidoResult:
        return await pg.search_studies(self.pool, query)

    async def search_series(self, query: QidoQuery) -> QidoResult:
        return await pg.search_series(self.pool, query)


@dataclass
class _Warehouse:
    pool: Any

    async def search_instances(self, query: QidoQuery) -> QidoResult:
        return await pg.search_instances(self.pool, query)


async def test_search_adds_retrieve_url(pool: Any) -> None:
    base = "http://h/dicom-web"
    r = await search(_Index(pool), _Warehouse(pool), q(Level.STUDY, [("PatientID", "P2")]), base)
    assert first(r.matches[0], "00081190") == f"{base}/studies/{B}"
    r = await search(_Index(pool), _Warehouse(pool), q(Level.SERIES, [], study=B), base + "/")
    assert r.matches[0]["00081190"] == {"vr": "UR", "Value": [f"{base}/studies/{B}/series/{B}.1"]}
    r = await search(_Index(pool), _Warehouse(pool), q(Level.INSTANCE, [], study=C), base)
    assert first(r.matches[0], "00081190") == f"{base}/studies/{C}/series/{C}.1/instances/{C}.1.1"


@pytest.fixture
async def client(pool: Any) -> AsyncIterator[httpx.AsyncClient]:
    async def error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DicomCloudError)
        return JSONResponse({"reason": exc.reason}, status_code=http_status(exc))

    app = Starlette(
        routes=[
            Mount("/dicom-web", routes=routes()),
            Mount("/tenants/{tenant}/dicom-web", routes=routes()),
        ],
        exception_handlers={DicomCloudError: error},
    )
    app.state.archive = SimpleNamespace(
        settings=Settings(default_tenant="t1", qido_default_limit=3, qido_max_limit=10),
        index=_Index(pool),
        warehouse=_Warehouse(pool),
        cache=ReadCache(None, 3600),  # answers computed every time (tests/integration/test_read_cache.py caches)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def test_http_search(client: httpx.AsyncClient) -> None:
    r = await client.get("/dicom-web/studies", params={"PatientID": "P2"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
    (m,) = r.json()
    assert first(m, "00081190") == f"http://testserver/dicom-web/studies/{B}"
    assert "warning" not in r.headers
    r = await client.get("/dicom-web/studies")  # 4 studies, default limit 3
    assert len(r.json()) == 3
    assert r.headers["warning"] == (
        '299 testserver: "There are additional results that can be requested"'
    )
    r = await client.get(f"/dicom-web/studies/{A}/series/{A}.1/instances")
    assert len(r.json()) == 3 and "warning" not in r.headers
    r = await client.get(f"/dicom-web/studies/{A}/instances", params={"offset": "3"})
    assert [first(m, "00080018") for m in r.json()] == [A + ".1.3"]
    r = await client.get("/dicom-web/series", params={"Modality": "US"})
    assert [first(m, "0020000E") for m in r.json()] == [C + ".1"]


async def test_http_tenant_route(client: httpx.AsyncClient) -> None:
    r = await client.get("/tenants/t2/dicom-web/studies")
    (m,) = r.json()
    assert first(m, "00100010") == {"Alphabetic": "Other^Tenant"}
    assert first(m, "00081190") == f"http://testserver/tenants/t2/dicom-web/studies/{A}"
    r = await client.get("/tenants/bad$tenant/dicom-web/studies")
    assert r.status_code == 400


async def test_http_empty_result_is_204(client: httpx.AsyncClient) -> None:
    r = await client.get("/dicom-web/studies", params={"PatientID": "nobody"})
    assert r.status_code == 204 and r.content == b""


@pytest.mark.parametrize(
    "path,params,status,word",
    [
        ("/dicom-web/studies", {"limit": "11"}, 400, "maximum"),
        ("/dicom-web/studies", {"StudyDate": "20201345"}, 400, "date"),
        ("/dicom-web/studies", {"Modality": "CT"}, 400, "supported keys"),
        ("/dicom-web/studies", {"bogus": "1"}, 400, "unknown"),
        ("/dicom-web/studies/1.2.x/series", {}, 400, "UID"),
    ],
)
async def test_http_errors(
    client: httpx.AsyncClient, path: str, params: dict[str, str], status: int, word: str
) -> None:
    r = await client.get(path, params=params)
    assert r.status_code == status and word in r.json()["reason"]


@pytest.mark.parametrize(
    "accept,status,media",
    [
        (None, 200, "application/dicom+json"),
        ("*/*", 200, "application/dicom+json"),
        ("application/json", 200, "application/json"),
        ("application/dicom+json, application/json;q=0.5", 200, "application/dicom+json"),
        ('multipart/related; type="application/dicom+xml"', 406, None),
        ("application/dicom+json;q=0, text/html", 406, None),
    ],
)
async def test_http_accept(
    client: httpx.AsyncClient, accept: str | None, status: int, media: str | None
) -> None:
    headers = {"accept": accept} if accept is not None else {}
    r = await client.get("/dicom-web/studies", params={"PatientID": "P2"}, headers=headers)
    assert r.status_code == status
    if media:
        assert r.headers["content-type"] == media
    else:
        assert "application/dicom+json" in r.json()["reason"]


async def test_http_accept_query_parameter(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/dicom-web/studies", params={"accept": "application/json"}, headers={"accept": "text/html"}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
