"""The loader's use case: batches from the bus into the warehouse (ARCHITECTURE §2 ``loader``).

Each message type goes to its table in one batch (Doris: one Stream Load).
Loads are idempotent upserts, so a retried batch changes nothing.
"""

from __future__ import annotations

from dicomcloud.domain.messages import DicomImageMeta, DicomStateMeta, InstanceStored, decode
from dicomcloud.errors import InvalidInput
from dicomcloud.ports import Record, Warehouse
from dicomcloud.usecases.index_instances import DeadLetter


class LoadWarehouse:
    def __init__(self, warehouse: Warehouse) -> None:
        self._warehouse = warehouse

    async def handle(self, records: list[Record]) -> list[DeadLetter]:
        images: list[DicomImageMeta] = []
        states: list[DicomStateMeta] = []
        stored: list[InstanceStored] = []
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
            else:
                stored.append(message)
        await self._warehouse.load_image_meta(images)
        await self._warehouse.load_state_meta(states)
        await self._warehouse.load_store_log(stored)
        return dead
