"""The small interfaces use cases depend on; adapters implement them.

Only ``bootstrap.py`` picks the concrete adapter for each port.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dicomcloud.domain.header import InstanceRecord
from dicomcloud.domain.layout import InstanceKey, SeriesKey, StudyKey
from dicomcloud.domain.messages import (
    ConversionResult,
    DicomImageMeta,
    DicomStateMeta,
    DimseAssociation,
    InstanceStored,
    WadoAccessed,
)
from dicomcloud.domain.qido import QidoQuery, QidoResult

JsonDict = dict[str, Any]


class BlobStore(Protocol):
    """Files under ROOT at the storage layout; writes are atomic (tmp, fsync, rename)."""

    root: Path

    def write_atomic(
        self,
        path: str,
        data: bytes | memoryview | Sequence[bytes | memoryview],
        *,
        mtime_ns: int | None = None,
        sync: bool = True,
    ) -> int: ...
    def sync(self, path: str) -> None: ...
    def read(self, path: str) -> bytes: ...
    def absolute(self, path: str) -> Path: ...
    def exists(self, path: str) -> bool: ...
    def remove(self, path: str) -> None: ...
    def series_instance_uids(self, key: SeriesKey) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: str
    value: bytes
    partition: int
    offset: int


class BusConsumer(Protocol):
    async def poll(self, max_records: int, timeout: float) -> list[Record]: ...
    async def commit(self, records: Sequence[Record]) -> None: ...
    async def seek_to_committed(self) -> None:
        """Forget uncommitted positions: the next poll delivers them again (retry later)."""
        ...

    async def close(self) -> None: ...


class Bus(Protocol):
    """A durable, ordered-per-key message bus (Kafka in distributed mode)."""

    async def publish(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        """Publish (topic, key, value) items; returns only once all are durable.

        Raises :class:`dicomcloud.errors.Unavailable` when they are not.
        """
        ...

    def publish_blocking(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        """The same, from a thread that is not the event loop's (the DIMSE handlers)."""
        ...

    def consumer(self, group: str, topics: Sequence[str]) -> BusConsumer: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SeriesState:
    key: SeriesKey
    patient_id: str
    modality: str
    revision: int
    metadata_revision: int
    number_of_series_related_instances: int


@dataclass(frozen=True, slots=True)
class StudyState:
    key: StudyKey
    patient_id: str
    revision: int
    metadata_revision: int
    number_of_study_related_series: int
    number_of_study_related_instances: int


class Index(Protocol):
    """Patient / study / series state (PostgreSQL), with exact counts."""

    async def apply(self, records: Sequence[tuple[InstanceRecord, str]]) -> list[tuple[SeriesState, StudyState]]:
        """Upsert (record, received_at ISO time) pairs idempotently.

        Returns the state of every series that changed: a new instance, or a
        newer copy of a known one. Redelivering the same events changes nothing.
        """
        ...

    async def series_state(self, key: SeriesKey) -> SeriesState | None: ...
    async def study_state(self, key: StudyKey) -> StudyState | None: ...
    async def series_of_study(self, key: StudyKey) -> list[SeriesState]: ...
    async def stale_series(
        self, limit: int, quiet_seconds: float = 0.0, max_delay_seconds: float = 0.0
    ) -> list[SeriesState]: ...
    async def stale_studies(
        self, limit: int, quiet_seconds: float = 0.0, max_delay_seconds: float = 0.0
    ) -> list[StudyState]: ...
    async def mark_series_metadata(self, key: SeriesKey, revision: int) -> None: ...
    async def mark_study_metadata(self, key: StudyKey, revision: int) -> None: ...
    async def instances(self, key: StudyKey | SeriesKey) -> list[InstanceKey]: ...
    async def search_studies(self, query: QidoQuery) -> QidoResult: ...
    async def search_series(self, query: QidoQuery) -> QidoResult: ...
    async def close(self) -> None: ...


class Warehouse(Protocol):
    """Instance records, series state history and logs (Doris, or PostgreSQL embedded)."""

    async def load_image_meta(self, rows: Sequence[DicomImageMeta]) -> None: ...
    async def load_state_meta(self, rows: Sequence[DicomStateMeta]) -> None: ...
    async def load_store_log(self, rows: Sequence[InstanceStored]) -> None: ...
    async def load_conversions(self, rows: Sequence[ConversionResult]) -> None:
        """Upsert one row per (tenant, SOP Instance UID, target syntax): the status and attempt
        of the attempt that finished last (an older result redelivered changes nothing) and the
        last error seen. A ``reused`` success (a redelivered request) does not replace a success row."""
        ...

    async def load_access_log(self, rows: Sequence[WadoAccessed]) -> None:
        """Insert one row per record id (the WadoAccessLog); a redelivered record changes nothing."""
        ...

    async def load_association_log(self, rows: Sequence[DimseAssociation]) -> None:
        """Insert one row per DIMSE association id (the store log's associations); a
        redelivered record changes nothing."""
        ...

    async def search_instances(self, query: QidoQuery) -> QidoResult: ...
    async def close(self) -> None: ...


class Cache(Protocol):
    """A shared store of short-lived bytes and counters (Redis; in-process when embedded).

    Anything may vanish before its TTL (eviction), so a reader treats a missing
    value as unknown, never as "nothing there". Every failure raises
    :class:`dicomcloud.errors.Unavailable`.
    """

    @property
    def incarnation(self) -> str:
        """The lifetime of the stored data: it changes whenever values written
        before may have been lost or rolled back (a restart, a restore from a
        snapshot, a failover). Updated before the first command of a new
        connection is sent; "" until the first connection."""
        ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` (a counter as its decimal digits), None where absent."""
        ...

    async def set(self, key: str, value: bytes, ttl_seconds: int | None) -> None:
        """Store ``value``; ``ttl_seconds=None``: no expiry (eviction may still drop it)."""
        ...

    async def incr_many(self, keys: Sequence[str], ttl_seconds: int | None) -> list[int]:
        """Increment counters and (re)set their TTL; the new values.

        A missing counter starts from an unpredictable large value, not from 0,
        so that a counter that vanished and is created again does not repeat a
        value it had before.
        """
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One of the OpenID provider's token signing keys."""

    key: Any  # a cryptography public key
    alg: str | None  # the JWK's own "alg", when it names one


class SigningKeys(Protocol):
    """The provider's key set (adapters/oidc.py): the key ``kid`` names, refreshed on a miss."""

    async def key(self, kid: str | None) -> SigningKey: ...
    async def prefetch(self) -> None: ...
    async def close(self) -> None: ...
