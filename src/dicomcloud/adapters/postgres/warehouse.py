"""The warehouse in PostgreSQL (embedded mode): schema ``warehouse``.

Loads are idempotent upserts keyed like the Doris tables will be (tenant
first), so a redelivered batch changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dicomcloud.adapters.postgres import qido
from dicomcloud.adapters.postgres.schema import WAREHOUSE
from dicomcloud.domain.attributes import STORED_INSTANCE, STORED_SERIES, STORED_STUDY
from dicomcloud.domain.messages import (
    ConversionResult,
    DicomImageMeta,
    DicomStateMeta,
    DimseAssociation,
    InstanceStored,
    WadoAccessed,
)
from dicomcloud.domain.qido import QidoQuery, QidoResult

_KEYS = {
    "tenant_id",
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
}
_VALUE_COLS = [a.column for a in STORED_STUDY + STORED_SERIES + STORED_INSTANCE if a.column not in _KEYS]
_IMAGE_COLS = [
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
    *_VALUE_COLS,
    "study_attrs",
    "series_attrs",
    "instance_attrs",
]
_QUOTED = ", ".join('"' + c + '"' for c in _IMAGE_COLS)
_IMAGE_UPSERT = (
    f"INSERT INTO {WAREHOUSE}.dicom_image_meta AS m ({_QUOTED}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(_IMAGE_COLS)))}) "
    "ON CONFLICT (tenant_id, study_instance_uid, series_instance_uid, sop_instance_uid) DO UPDATE SET "
    + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in _IMAGE_COLS[4:])
    + ", loaded_at = now() WHERE m.received_at <= EXCLUDED.received_at"
)

# Last finished attempt wins (a redelivered older result changes nothing); a ``reused``
# success ($14: the rendition was there already) never replaces a success row, so a
# redelivered request keeps the duration of the conversion that wrote the rendition.
_CONVERSION_UPSERT = f"""
INSERT INTO {WAREHOUSE}.conversion AS c (tenant_id, sop_instance_uid, target_transfer_syntax_uid,
  study_instance_uid, series_instance_uid, source_transfer_syntax_uid, status, attempts, last_error,
  duration_ms, rendition_path, rendition_size, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (tenant_id, sop_instance_uid, target_transfer_syntax_uid) DO UPDATE SET
  study_instance_uid = EXCLUDED.study_instance_uid,
  series_instance_uid = EXCLUDED.series_instance_uid,
  source_transfer_syntax_uid = EXCLUDED.source_transfer_syntax_uid,
  status = EXCLUDED.status,
  attempts = EXCLUDED.attempts,
  last_error = CASE WHEN EXCLUDED.last_error <> '' THEN EXCLUDED.last_error ELSE c.last_error END,
  duration_ms = EXCLUDED.duration_ms,
  rendition_path = EXCLUDED.rendition_path,
  rendition_size = EXCLUDED.rendition_size,
  finished_at = EXCLUDED.finished_at,
  loaded_at = now()
WHERE EXCLUDED.finished_at >= c.finished_at AND NOT ($14::boolean AND c.status = 'success')
"""


class PostgresWarehouse:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def close(self) -> None:
        return None

    async def _load(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        """One ``executemany`` of ``sql`` over ``args`` (one row each); nothing to do for none."""
        if not args:
            return
        async with self._pool.acquire() as conn:
            await conn.executemany(sql, args)

    async def load_image_meta(self, rows: Sequence[DicomImageMeta]) -> None:
        args = [
            (
                r.tenant_id,
                r.study_instance_uid,
                r.series_instance_uid,
                r.sop_instance_uid,
                r.sop_class_uid,
                r.transfer_syntax_uid,
                r.patient_id,
                r.file_path,
                r.file_size,
                datetime.fromisoformat(r.received_at),
                *[r.values.get(c) for c in _VALUE_COLS],
                r.study,
                r.series,
                r.instance,
            )
            for r in rows
        ]
        await self._load(_IMAGE_UPSERT, args)

    async def load_state_meta(self, rows: Sequence[DicomStateMeta]) -> None:
        await self._load(
            f"""INSERT INTO {WAREHOUSE}.dicom_state_meta (tenant_id, study_instance_uid,
                  series_instance_uid, revision, patient_id, modality,
                  number_of_series_related_instances, number_of_study_related_series,
                  number_of_study_related_instances, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING""",
            [
                (
                    r.tenant_id,
                    r.study_instance_uid,
                    r.series_instance_uid,
                    r.revision,
                    r.patient_id,
                    r.modality,
                    r.number_of_series_related_instances,
                    r.number_of_study_related_series,
                    r.number_of_study_related_instances,
                    datetime.fromisoformat(r.updated_at),
                )
                for r in rows
            ],
        )

    async def load_store_log(self, rows: Sequence[InstanceStored]) -> None:
        await self._load(
            f"""INSERT INTO {WAREHOUSE}.store_log (tenant_id, sop_instance_uid, received_at,
                  study_instance_uid, series_instance_uid, sop_class_uid, transfer_syntax_uid,
                  file_size, source_kind, calling_ae_title, called_ae_title, address)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING""",
            [
                (
                    r.tenant_id,
                    r.sop_instance_uid,
                    datetime.fromisoformat(r.received_at),
                    r.study_instance_uid,
                    r.series_instance_uid,
                    r.sop_class_uid,
                    r.transfer_syntax_uid,
                    r.file_size,
                    r.source.kind,
                    r.source.calling_ae_title,
                    r.source.called_ae_title,
                    r.source.address,
                )
                for r in rows
            ],
        )

    async def load_conversions(self, rows: Sequence[ConversionResult]) -> None:
        await self._load(
            _CONVERSION_UPSERT,
            [
                (
                    r.tenant_id,
                    r.sop_instance_uid,
                    r.target_transfer_syntax_uid,
                    r.study_instance_uid,
                    r.series_instance_uid,
                    r.source_transfer_syntax_uid,
                    r.status,
                    r.attempt,
                    r.error,
                    r.duration_ms,
                    r.rendition_path,
                    r.rendition_size,
                    datetime.fromisoformat(r.finished_at),
                    r.reused,
                )
                for r in rows
            ],
        )

    async def load_access_log(self, rows: Sequence[WadoAccessed]) -> None:
        await self._load(
            f"""INSERT INTO {WAREHOUSE}.wado_access_log (tenant_id, record_id, requested_at, subject,
                  client_address, method, route, service, level, study_instance_uid,
                  series_instance_uid, sop_instance_uid, status, request_bytes, response_bytes,
                  duration_ms)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                ON CONFLICT DO NOTHING""",
            [
                (
                    r.tenant_id,
                    uuid.UUID(r.record_id),
                    datetime.fromisoformat(r.requested_at),
                    r.subject,
                    r.client_address,
                    r.method,
                    r.route,
                    r.service,
                    r.level,
                    r.study_instance_uid,
                    r.series_instance_uid,
                    r.sop_instance_uid,
                    r.status,
                    r.request_bytes,
                    r.response_bytes,
                    r.duration_ms,
                )
                for r in rows
            ],
        )

    async def load_association_log(self, rows: Sequence[DimseAssociation]) -> None:
        await self._load(
            f"""INSERT INTO {WAREHOUSE}.dimse_association_log (tenant_id, association_id, started_at,
                  ended_at, calling_ae_title, called_ae_title, address, outcome, reason,
                  instances_stored, instances_failed, failure_statuses, bytes_received)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                ON CONFLICT DO NOTHING""",
            [
                (
                    r.tenant_id,
                    uuid.UUID(r.association_id),
                    datetime.fromisoformat(r.started_at),
                    datetime.fromisoformat(r.ended_at),
                    r.calling_ae_title,
                    r.called_ae_title,
                    r.address,
                    r.outcome,
                    r.reason,
                    r.instances_stored,
                    r.instances_failed,
                    r.failure_statuses,
                    r.bytes_received,
                )
                for r in rows
            ],
        )

    async def search_instances(self, query: QidoQuery) -> QidoResult:
        return await qido.search_instances(self._pool, query)
