"""Schema and migrations of the index (``dicom_index``) and the embedded warehouse
(``warehouse``). Columns for DICOM attributes come from the attribute registry,
so the stores and QIDO agree by construction. Every table leads with tenant_id
in its key (ready for Citus distribution on it).

DICOM JSON of each level is kept as ``json`` (the text as written), not
``jsonb``: it is only ever returned whole, and PostgreSQL hands ``json`` back
without re-serialising it — a third of the cost of a large QIDO answer.
"""

from __future__ import annotations

import asyncpg

from dicomcloud.domain.attributes import (
    PATIENT_ATTRIBUTES,
    STORED_INSTANCE,
    STORED_SERIES,
    STORED_STUDY,
    Attribute,
)

INDEX = "dicom_index"
WAREHOUSE = "warehouse"
_MULTI_VALUED = {"ImageType", "ModalitiesInStudy"}


def sql_type(attr: Attribute) -> str:
    if attr.keyword in _MULTI_VALUED:
        return "text[]"
    if attr.vr in ("US", "UL", "SS", "SL", "IS"):
        return "bigint"
    return "text"


def _columns(attrs: tuple[Attribute, ...], skip: set[str]) -> str:
    return "".join(f',\n  "{a.column}" {sql_type(a)}' for a in attrs if a.column not in skip)


_KEYS = {"tenant_id", "patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid"}

_V1 = f"""
CREATE SCHEMA IF NOT EXISTS {INDEX};
CREATE SCHEMA IF NOT EXISTS {WAREHOUSE};

CREATE TABLE {INDEX}.patient (
  tenant_id text NOT NULL,
  patient_id text NOT NULL{_columns(PATIENT_ATTRIBUTES, _KEYS)},
  attrs json NOT NULL DEFAULT '{{}}',
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, patient_id)
);

CREATE TABLE {INDEX}.study (
  tenant_id text NOT NULL,
  study_instance_uid text NOT NULL,
  patient_id text NOT NULL DEFAULT ''{_columns(STORED_STUDY, _KEYS)},
  modalities_in_study text[] NOT NULL DEFAULT '{{}}',
  number_of_study_related_series bigint NOT NULL DEFAULT 0,
  number_of_study_related_instances bigint NOT NULL DEFAULT 0,
  attrs json NOT NULL DEFAULT '{{}}',
  revision bigint NOT NULL DEFAULT 1,
  metadata_revision bigint NOT NULL DEFAULT 0,
  metadata_built_at timestamptz NOT NULL DEFAULT '-infinity',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, study_instance_uid)
);
CREATE INDEX study_patient_id ON {INDEX}.study (tenant_id, patient_id);
CREATE INDEX study_patient_name ON {INDEX}.study (tenant_id, lower(patient_name));
CREATE INDEX study_study_date ON {INDEX}.study (tenant_id, study_date);
CREATE INDEX study_accession ON {INDEX}.study (tenant_id, accession_number);
CREATE INDEX study_stale ON {INDEX}.study (tenant_id) WHERE revision > metadata_revision;

CREATE TABLE {INDEX}.series (
  tenant_id text NOT NULL,
  study_instance_uid text NOT NULL,
  series_instance_uid text NOT NULL{_columns(STORED_SERIES, _KEYS)},
  number_of_series_related_instances bigint NOT NULL DEFAULT 0,
  attrs json NOT NULL DEFAULT '{{}}',
  revision bigint NOT NULL DEFAULT 1,
  metadata_revision bigint NOT NULL DEFAULT 0,
  metadata_built_at timestamptz NOT NULL DEFAULT '-infinity',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, study_instance_uid, series_instance_uid)
);
CREATE INDEX series_uid ON {INDEX}.series (tenant_id, series_instance_uid);
CREATE INDEX series_stale ON {INDEX}.series (tenant_id) WHERE revision > metadata_revision;

-- Membership only: keeps counts exact under redelivery and lists what to retrieve.
-- Instance attributes live in the warehouse (dicom_image_meta).
CREATE TABLE {INDEX}.instance (
  tenant_id text NOT NULL,
  study_instance_uid text NOT NULL,
  series_instance_uid text NOT NULL,
  sop_instance_uid text NOT NULL,
  instance_number bigint,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, study_instance_uid, series_instance_uid, sop_instance_uid)
);

CREATE TABLE {WAREHOUSE}.dicom_image_meta (
  tenant_id text NOT NULL,
  study_instance_uid text NOT NULL,
  series_instance_uid text NOT NULL,
  sop_instance_uid text NOT NULL,
  sop_class_uid text NOT NULL,
  transfer_syntax_uid text NOT NULL,
  patient_id text NOT NULL DEFAULT '',
  file_path text NOT NULL,
  file_size bigint NOT NULL,
  received_at timestamptz NOT NULL{_columns(STORED_STUDY + STORED_SERIES + STORED_INSTANCE, _KEYS | {"sop_class_uid"})},
  study_attrs json NOT NULL DEFAULT '{{}}',
  series_attrs json NOT NULL DEFAULT '{{}}',
  instance_attrs json NOT NULL DEFAULT '{{}}',
  loaded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, study_instance_uid, series_instance_uid, sop_instance_uid)
);
CREATE INDEX image_sop ON {WAREHOUSE}.dicom_image_meta (tenant_id, sop_instance_uid);

CREATE TABLE {WAREHOUSE}.dicom_state_meta (
  tenant_id text NOT NULL,
  study_instance_uid text NOT NULL,
  series_instance_uid text NOT NULL,
  revision bigint NOT NULL,
  patient_id text NOT NULL,
  modality text NOT NULL,
  number_of_series_related_instances bigint NOT NULL,
  number_of_study_related_series bigint NOT NULL,
  number_of_study_related_instances bigint NOT NULL,
  updated_at timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, study_instance_uid, series_instance_uid, revision)
);

CREATE TABLE {WAREHOUSE}.store_log (
  tenant_id text NOT NULL,
  sop_instance_uid text NOT NULL,
  received_at timestamptz NOT NULL,
  study_instance_uid text NOT NULL,
  series_instance_uid text NOT NULL,
  sop_class_uid text NOT NULL,
  transfer_syntax_uid text NOT NULL,
  file_size bigint NOT NULL,
  source_kind text NOT NULL,
  calling_ae_title text NOT NULL,
  called_ae_title text NOT NULL,
  address text NOT NULL,
  PRIMARY KEY (tenant_id, sop_instance_uid, received_at)
);
"""

# V2: conversion records (issue 4). One row per instance and rendition syntax, upserted
# by the loader from ConversionResult messages (adapters/postgres/warehouse.py).
_V2 = f"""
CREATE TABLE {WAREHOUSE}.conversion (
  tenant_id text NOT NULL,
  sop_instance_uid text NOT NULL,
  target_transfer_syntax_uid text NOT NULL,
  study_instance_uid text NOT NULL,
  series_instance_uid text NOT NULL,
  source_transfer_syntax_uid text NOT NULL,
  status text NOT NULL CHECK (status IN ('success', 'retrying', 'failed', 'unsupported')),
  attempts int NOT NULL,
  last_error text NOT NULL DEFAULT '',
  duration_ms double precision NOT NULL,
  rendition_path text NOT NULL DEFAULT '',
  rendition_size bigint NOT NULL DEFAULT 0,
  finished_at timestamptz NOT NULL,
  loaded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, sop_instance_uid, target_transfer_syntax_uid)
);
CREATE INDEX conversion_status ON {WAREHOUSE}.conversion (tenant_id, status, finished_at);
CREATE INDEX conversion_study ON {WAREHOUSE}.conversion (tenant_id, study_instance_uid);
"""

# V3: the WadoAccessLog (issue 5). One row per DICOMweb request, inserted by the loader
# from WadoAccessed messages; the record id makes a redelivered record change nothing.
_V3 = f"""
CREATE TABLE {WAREHOUSE}.wado_access_log (
  tenant_id text NOT NULL,
  record_id uuid NOT NULL,
  requested_at timestamptz NOT NULL,
  subject text NOT NULL DEFAULT '',
  client_address text NOT NULL DEFAULT '',
  method text NOT NULL,
  route text NOT NULL,
  service text NOT NULL,
  level text NOT NULL,
  study_instance_uid text NOT NULL DEFAULT '',
  series_instance_uid text NOT NULL DEFAULT '',
  sop_instance_uid text NOT NULL DEFAULT '',
  status int NOT NULL,
  request_bytes bigint NOT NULL,
  response_bytes bigint NOT NULL,
  duration_ms double precision NOT NULL,
  loaded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, record_id)
);
CREATE INDEX wado_access_log_time ON {WAREHOUSE}.wado_access_log (tenant_id, requested_at);
CREATE INDEX wado_access_log_study ON {WAREHOUSE}.wado_access_log (tenant_id, study_instance_uid)
  WHERE study_instance_uid <> '';
"""

# V4: the store log's associations (issue 6). One row per DIMSE association, accepted or
# not, inserted by the loader from DimseAssociation messages; the association id makes a
# redelivered record change nothing. Rows of store_log (one per instance) carry the same
# calling / called AE titles and address.
_V4 = f"""
CREATE TABLE {WAREHOUSE}.dimse_association_log (
  tenant_id text NOT NULL,
  association_id uuid NOT NULL,
  started_at timestamptz NOT NULL,
  ended_at timestamptz NOT NULL,
  calling_ae_title text NOT NULL,
  called_ae_title text NOT NULL,
  address text NOT NULL,
  outcome text NOT NULL CHECK (outcome IN ('released', 'aborted', 'rejected')),
  reason text NOT NULL DEFAULT '',
  instances_stored bigint NOT NULL,
  instances_failed bigint NOT NULL,
  failure_statuses jsonb NOT NULL DEFAULT '{{}}',
  bytes_received bigint NOT NULL,
  loaded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, association_id)
);
CREATE INDEX dimse_association_log_time ON {WAREHOUSE}.dimse_association_log (tenant_id, started_at);
CREATE INDEX dimse_association_log_outcome ON {WAREHOUSE}.dimse_association_log (tenant_id, outcome, started_at)
  WHERE outcome <> 'released';
"""

MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _V1), (2, _V2), (3, _V3), (4, _V4))


async def migrate(conn: asyncpg.Connection) -> None:
    """Apply pending migrations once, under an advisory lock (several processes may start)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7305150)")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS public.dicomcloud_migrations "
            "(version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM public.dicomcloud_migrations")}
        for version, sql in MIGRATIONS:
            if version not in done:
                await conn.execute(sql)
                await conn.execute("INSERT INTO public.dicomcloud_migrations (version) VALUES ($1)", version)
