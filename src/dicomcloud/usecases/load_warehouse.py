"""The loader's use case: batches from the bus into the warehouse (ARCHITECTURE §2 ``loader``).

Each message type goes to its table in one batch (Doris: one Stream Load):
DicomImageMeta, DicomStateMeta, InstanceStored (the store log),
DimseAssociation (the store log's associations, ``warehouse.dimse_association_log``),
ConversionResult (``warehouse.conversion``) and WadoAccessed
(``warehouse.wado_access_log``). Anything else is dead-lettered.
Loads are idempotent upserts, so a retried batch changes nothing. Then the
read cache's generations of the loaded instances' studies move; a cache that
cannot be reached does not hold the batch up (:meth:`ReadCache.invalidate`
never raises: it owes an epoch bump instead).
"""

from __future__ import annotations

from dicomcloud.domain.messages import (
    ConversionResult,
    DicomImageMeta,
    DicomStateMeta,
    DimseAssociation,
    InstanceStored,
    WadoAccessed,
    decode,
)
from dicomcloud.errors import InvalidInput
from dicomcloud.ports import Record, Warehouse
from dicomcloud.usecases.index_instances import DeadLetter
from dicomcloud.usecases.read_cache import ReadCache


class LoadWarehouse:
    def __init__(self, warehouse: Warehouse, cache: ReadCache | None = None) -> None:
        self._warehouse = warehouse
        self._cache = cache

    async def handle(self, records: list[Record]) -> list[DeadLetter]:
        images: list[DicomImageMeta] = []
        states: list[DicomStateMeta] = []
        stored: list[InstanceStored] = []
        conversions: list[ConversionResult] = []
        accesses: list[WadoAccessed] = []
        associations: list[DimseAssociation] = []
        dead: list[DeadLetter] = []
        for record in records:
            try:
                message = decode(record.value)
            except InvalidInput as exc:
                dead.append(DeadLetter(record, exc.reason))
                continue
            if isinstance(message, DicomImageMeta):
                images.append(message)
            elif isinstance(message, DicomStateMeta):
                states.append(message)
            elif isinstance(message, InstanceStored):
                stored.append(message)
            elif isinstance(message, ConversionResult):
                conversions.append(message)
            elif isinstance(message, WadoAccessed):
                accesses.append(message)
            elif isinstance(message, DimseAssociation):
                associations.append(message)
            else:
                dead.append(DeadLetter(record, f"{type(message).__name__} does not belong on {record.topic}"))
        await self._warehouse.load_image_meta(images)
        await self._warehouse.load_state_meta(states)
        await self._warehouse.load_store_log(stored)
        await self._warehouse.load_conversions(conversions)
        if accesses:
            await self._warehouse.load_access_log(accesses)
        if associations:
            await self._warehouse.load_association_log(associations)
        if self._cache is not None:
            # Instance searches read the warehouse: their answers move once it is loaded.
            await self._cache.invalidate({(m.tenant_id, m.study_instance_uid) for m in images})
        return dead
