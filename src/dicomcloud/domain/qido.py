"""QIDO-RS query model (PS3.18 §10.6, matching per PS3.4 C.2.2.2).

PLACEHOLDER: being written (parse query parameters → QidoQuery).
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomcloud.domain.attributes import Level


@dataclass(frozen=True)
class QidoQuery:
    level: Level
    tenant_id: str
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    limit: int | None = None
    offset: int = 0
