"""The index in PostgreSQL: patient, study and series levels with exact counts.

Instance membership (keys only) keeps counts exact under redelivery
(ARCHITECTURE §6.2): an instance counts once however often its event is
delivered; a newer copy (later ``received_at``) bumps the series revision so
its metadata is rebuilt. All statements filter on tenant_id first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dicomcloud.adapters.postgres import qido
from dicomcloud.adapters.postgres.schema import INDEX
from dicomcloud.domain.attributes import PATIENT_ATTRIBUTES, STORED_SERIES, STORED_STUDY
from dicomcloud.domain.header import InstanceRecord
from dicomcloud.domain.layout import InstanceKey, SeriesKey, StudyKey
from dicomcloud.domain.qido import QidoQuery, QidoResult
from dicomcloud.ports import JsonDict, SeriesState, StudyState

_KEYS = {"tenant_id", "patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid"}
_PATIENT_COLS = [a.column for a in PATIENT_ATTRIBUTES if a.column not in _KEYS]
_STUDY_COLS = [a.column for a in STORED_STUDY if a.column not in _KEYS]
_SERIES_COLS = [a.column for a in STORED_SERIES if a.column not in _KEYS]


def _upsert_sql(table: str, keys: list[str], cols: list[str], extra_update: str) -> str:
    names = keys + [f'"{c}"' for c in cols] + ["attrs"]
    params = ", ".join(f"${i + 1}" for i in range(len(names)))
    updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in names[len(keys) :])
    return (
        f"INSERT INTO {INDEX}.{table} ({', '.join(names)}) VALUES ({params}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}{extra_update}"
    )


_PATIENT_UPSERT = _upsert_sql("patient", ["tenant_id", "patient_id"], _PATIENT_COLS, ", updated_at = now()")
_STUDY_UPSERT = _upsert_sql(
    "study",
    ["tenant_id", "study_instance_uid", "patient_id"],
    _STUDY_COLS,
    ", updated_at = now(), revision = study.revision + 1",
)
_STUDY_UPSERT = _STUDY_UPSERT.replace(
    "ON CONFLICT (tenant_id, study_instance_uid, patient_id)",
    "ON CONFLICT (tenant_id, study_instance_uid)",
)
_SERIES_UPSERT = _upsert_sql(
    "series",
    ["tenant_id", "study_instance_uid", "series_instance_uid"],
    _SERIES_COLS,
    ", updated_at = now(), revision = series.revision + 1",
)

_SERIES_COUNTS = f"""
UPDATE {INDEX}.series s SET number_of_series_related_instances = (
  SELECT count(*) FROM {INDEX}.instance i
  WHERE i.tenant_id = s.tenant_id AND i.study_instance_uid = s.study_instance_uid
    AND i.series_instance_uid = s.series_instance_uid)
WHERE s.tenant_id = $1 AND s.study_instance_uid = $2 AND s.series_instance_uid = $3
RETURNING s.revision, s.metadata_revision, s.number_of_series_related_instances,
          coalesce(s.modality, '') AS modality
"""

_STUDY_COUNTS = f"""
UPDATE {INDEX}.study st SET
  number_of_study_related_series = agg.n_series,
  number_of_study_related_instances = agg.n_instances,
  modalities_in_study = agg.modalities
FROM (
  SELECT count(*) AS n_series,
         coalesce(sum(number_of_series_related_instances), 0) AS n_instances,
         coalesce(array_agg(DISTINCT modality ORDER BY modality)
                  FILTER (WHERE modality IS NOT NULL AND modality <> ''), '{{}}') AS modalities
  FROM {INDEX}.series WHERE tenant_id = $1 AND study_instance_uid = $2
) agg
WHERE st.tenant_id = $1 AND st.study_instance_uid = $2
RETURNING st.patient_id, st.revision, st.metadata_revision,
          st.number_of_study_related_series, st.number_of_study_related_instances
"""


def _row_values(cols: list[str], values: dict[str, Any]) -> list[Any]:
    return [values.get(c) for c in cols]


class PostgresIndex:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def close(self) -> None:
        return None

    async def apply(self, records: Sequence[tuple[InstanceRecord, str]]) -> list[tuple[SeriesState, StudyState]]:
        latest: dict[InstanceKey, tuple[InstanceRecord, datetime]] = {}
        for record, received_at in records:
            when = datetime.fromisoformat(received_at)
            prev = latest.get(record.key)
            if prev is None or prev[1] <= when:
                latest[record.key] = (record, when)
        if not latest:
            return []
        items = list(latest.values())
        async with self._pool.acquire() as conn, conn.transaction():
            changed_rows = await conn.fetch(
                f"""
                INSERT INTO {INDEX}.instance AS i (tenant_id, study_instance_uid,
                    series_instance_uid, sop_instance_uid, instance_number, created_at)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                     $5::bigint[], $6::timestamptz[])
                ON CONFLICT (tenant_id, study_instance_uid, series_instance_uid, sop_instance_uid)
                DO UPDATE SET created_at = EXCLUDED.created_at, instance_number = EXCLUDED.instance_number
                WHERE i.created_at < EXCLUDED.created_at
                RETURNING sop_instance_uid, tenant_id
                """,
                [r.key.tenant_id for r, _ in items],
                [r.key.study_instance_uid for r, _ in items],
                [r.key.series_instance_uid for r, _ in items],
                [r.key.sop_instance_uid for r, _ in items],
                [r.instance_values.get("instance_number") for r, _ in items],
                [when for _, when in items],
            )
            changed = {(row["tenant_id"], row["sop_instance_uid"]) for row in changed_rows}
            by_series: dict[SeriesKey, InstanceRecord] = {}
            for record, _ in items:
                if (record.key.tenant_id, record.key.sop_instance_uid) in changed:
                    by_series[record.key.series] = record
            if not by_series:
                return []
            patients: dict[tuple[str, str], InstanceRecord] = {}
            studies: dict[StudyKey, InstanceRecord] = {}
            for series_key, record in by_series.items():
                patients[(series_key.tenant_id, record.patient_id)] = record
                studies[series_key.study] = record
            for (tenant_id, patient_id), record in sorted(patients.items()):
                await conn.execute(
                    _PATIENT_UPSERT,
                    tenant_id,
                    patient_id,
                    *_row_values(_PATIENT_COLS, record.patient_values),
                    record.patient,
                )
            for study_key, record in sorted(studies.items(), key=lambda kv: kv[0].study_instance_uid):
                await conn.execute(
                    _STUDY_UPSERT,
                    study_key.tenant_id,
                    study_key.study_instance_uid,
                    record.patient_id,
                    *_row_values(_STUDY_COLS, record.study_values),
                    record.study,
                )
            series_rows = {}
            for series_key, record in sorted(by_series.items(), key=lambda kv: kv[0].series_instance_uid):
                await conn.execute(
                    _SERIES_UPSERT,
                    series_key.tenant_id,
                    series_key.study_instance_uid,
                    series_key.series_instance_uid,
                    *_row_values(_SERIES_COLS, record.series_values),
                    record.series,
                )
                series_rows[series_key] = await conn.fetchrow(
                    _SERIES_COUNTS,
                    series_key.tenant_id,
                    series_key.study_instance_uid,
                    series_key.series_instance_uid,
                )
            study_rows = {}
            for study_key in studies:
                study_rows[study_key] = await conn.fetchrow(
                    _STUDY_COUNTS, study_key.tenant_id, study_key.study_instance_uid
                )
        result = []
        for series_key, srow in series_rows.items():
            strow = study_rows[series_key.study]
            result.append(
                (
                    SeriesState(
                        series_key,
                        strow["patient_id"],
                        srow["modality"],
                        srow["revision"],
                        srow["metadata_revision"],
                        srow["number_of_series_related_instances"],
                    ),
                    _study_state(series_key.study, strow),
                )
            )
        return result

    async def series_state(self, key: SeriesKey) -> SeriesState | None:
        row = await self._pool.fetchrow(
            f"""SELECT s.revision, s.metadata_revision, s.number_of_series_related_instances,
                       coalesce(s.modality, '') AS modality, st.patient_id
                FROM {INDEX}.series s JOIN {INDEX}.study st
                  ON st.tenant_id = s.tenant_id AND st.study_instance_uid = s.study_instance_uid
                WHERE s.tenant_id = $1 AND s.study_instance_uid = $2 AND s.series_instance_uid = $3""",
            key.tenant_id,
            key.study_instance_uid,
            key.series_instance_uid,
        )
        return None if row is None else _series_state(key, row)

    async def study_state(self, key: StudyKey) -> StudyState | None:
        row = await self._pool.fetchrow(
            f"""SELECT patient_id, revision, metadata_revision, number_of_study_related_series,
                       number_of_study_related_instances
                FROM {INDEX}.study WHERE tenant_id = $1 AND study_instance_uid = $2""",
            key.tenant_id,
            key.study_instance_uid,
        )
        return None if row is None else _study_state(key, row)

    async def series_of_study(self, key: StudyKey) -> list[SeriesState]:
        rows = await self._pool.fetch(
            f"""SELECT s.series_instance_uid, s.revision, s.metadata_revision,
                       s.number_of_series_related_instances, coalesce(s.modality, '') AS modality,
                       st.patient_id
                FROM {INDEX}.series s JOIN {INDEX}.study st
                  ON st.tenant_id = s.tenant_id AND st.study_instance_uid = s.study_instance_uid
                WHERE s.tenant_id = $1 AND s.study_instance_uid = $2
                ORDER BY s.series_number NULLS LAST, s.series_instance_uid""",
            key.tenant_id,
            key.study_instance_uid,
        )
        return [
            _series_state(SeriesKey(key.tenant_id, key.study_instance_uid, r["series_instance_uid"]), r) for r in rows
        ]

    async def stale_series(
        self, limit: int, quiet_seconds: float = 0.0, max_delay_seconds: float = 0.0
    ) -> list[SeriesState]:
        rows = await self._pool.fetch(
            f"""SELECT s.tenant_id, s.study_instance_uid, s.series_instance_uid, s.revision,
                       s.metadata_revision, s.number_of_series_related_instances,
                       coalesce(s.modality, '') AS modality, '' AS patient_id
                FROM {INDEX}.series s WHERE s.revision > s.metadata_revision
                  AND (s.updated_at < now() - make_interval(secs => $2)
                       OR s.metadata_built_at < now() - make_interval(secs => $3))
                ORDER BY s.updated_at LIMIT $1""",
            limit,
            quiet_seconds,
            max(max_delay_seconds, quiet_seconds),
        )
        return [
            _series_state(SeriesKey(r["tenant_id"], r["study_instance_uid"], r["series_instance_uid"]), r) for r in rows
        ]

    async def stale_studies(
        self, limit: int, quiet_seconds: float = 0.0, max_delay_seconds: float = 0.0
    ) -> list[StudyState]:
        rows = await self._pool.fetch(
            f"""SELECT tenant_id, study_instance_uid, patient_id, revision, metadata_revision,
                       number_of_study_related_series, number_of_study_related_instances
                FROM {INDEX}.study WHERE revision > metadata_revision
                  AND (updated_at < now() - make_interval(secs => $2)
                       OR metadata_built_at < now() - make_interval(secs => $3))
                ORDER BY updated_at LIMIT $1""",
            limit,
            quiet_seconds,
            max(max_delay_seconds, quiet_seconds),
        )
        return [_study_state(StudyKey(r["tenant_id"], r["study_instance_uid"]), r) for r in rows]

    async def mark_series_metadata(self, key: SeriesKey, revision: int) -> None:
        await self._pool.execute(
            f"""UPDATE {INDEX}.series SET metadata_revision = greatest(metadata_revision, $4),
                       metadata_built_at = now()
                WHERE tenant_id = $1 AND study_instance_uid = $2 AND series_instance_uid = $3""",
            key.tenant_id,
            key.study_instance_uid,
            key.series_instance_uid,
            revision,
        )

    async def mark_study_metadata(self, key: StudyKey, revision: int) -> None:
        await self._pool.execute(
            f"""UPDATE {INDEX}.study SET metadata_revision = greatest(metadata_revision, $3),
                       metadata_built_at = now()
                WHERE tenant_id = $1 AND study_instance_uid = $2""",
            key.tenant_id,
            key.study_instance_uid,
            revision,
        )

    async def instances(self, key: StudyKey | SeriesKey) -> list[InstanceKey]:
        if isinstance(key, SeriesKey):
            rows = await self._pool.fetch(
                f"""SELECT series_instance_uid, sop_instance_uid FROM {INDEX}.instance
                    WHERE tenant_id = $1 AND study_instance_uid = $2 AND series_instance_uid = $3
                    ORDER BY instance_number NULLS LAST, sop_instance_uid""",
                key.tenant_id,
                key.study_instance_uid,
                key.series_instance_uid,
            )
        else:
            rows = await self._pool.fetch(
                f"""SELECT i.series_instance_uid, i.sop_instance_uid FROM {INDEX}.instance i
                    JOIN {INDEX}.series s ON s.tenant_id = i.tenant_id
                     AND s.study_instance_uid = i.study_instance_uid
                     AND s.series_instance_uid = i.series_instance_uid
                    WHERE i.tenant_id = $1 AND i.study_instance_uid = $2
                    ORDER BY s.series_number NULLS LAST, i.series_instance_uid,
                             i.instance_number NULLS LAST, i.sop_instance_uid""",
                key.tenant_id,
                key.study_instance_uid,
            )
        return [
            InstanceKey(
                key.tenant_id,
                key.study_instance_uid,
                r["series_instance_uid"],
                r["sop_instance_uid"],
            )
            for r in rows
        ]

    async def search_studies(self, query: QidoQuery) -> QidoResult:
        return await qido.search_studies(self._pool, query)

    async def search_series(self, query: QidoQuery) -> QidoResult:
        return await qido.search_series(self._pool, query)


def _series_state(key: SeriesKey, row: Any) -> SeriesState:
    return SeriesState(
        key,
        row["patient_id"],
        row["modality"],
        row["revision"],
        row["metadata_revision"],
        row["number_of_series_related_instances"],
    )


def _study_state(key: StudyKey, row: Any) -> StudyState:
    return StudyState(
        key,
        row["patient_id"],
        row["revision"],
        row["metadata_revision"],
        row["number_of_study_related_series"],
        row["number_of_study_related_instances"],
    )


__all__ = ["JsonDict", "PostgresIndex"]
