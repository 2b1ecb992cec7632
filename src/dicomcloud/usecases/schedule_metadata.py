"""When the webworker builds a series' metadata: soon after its last change, debounced.

The consumer publishes a DicomStateMeta to ``dicom_state_queue`` for every
series whose index state changed. The webworker notes each such series here
and builds its metadata once the series has been quiet for ``quiet_seconds``
— or at the latest ``max_delay_seconds`` after its first unbuilt change, so
a long series is built incrementally while it arrives instead of waiting for
its end. Events only say *when* to look: what to build is read from the
index (its revision), so lost, repeated or reordered events cost at most a
rebuild, and the webworker's periodic scan of the index catches anything an
event did not announce (e.g. a crash between commit and build).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from dicomcloud.domain.layout import SeriesKey
from dicomcloud.domain.messages import DicomStateMeta, decode
from dicomcloud.errors import InvalidInput
from dicomcloud.ports import Record
from dicomcloud.usecases.index_instances import DeadLetter


@dataclass(slots=True)
class _Pending:
    first: float
    last: float


class MetadataSchedule:
    def __init__(
        self, quiet_seconds: float, max_delay_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._quiet = quiet_seconds
        self._max_delay = max(max_delay_seconds, quiet_seconds)
        self._clock = clock
        self._pending: dict[SeriesKey, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def note(self, key: SeriesKey) -> None:
        now = self._clock()
        pending = self._pending.get(key)
        if pending is None:
            self._pending[key] = _Pending(now, now)
        else:
            pending.last = now

    def due(self) -> list[SeriesKey]:
        """The series to build now, in order of their first change; they leave the schedule."""
        now = self._clock()
        ready = [
            key
            for key, p in self._pending.items()
            if now - p.last >= self._quiet or now - p.first >= self._max_delay
        ]
        for key in ready:
            del self._pending[key]
        return ready

    async def handle(self, records: list[Record]) -> list[DeadLetter]:
        """Consumer handler for ``dicom_state_queue``: note every changed series."""
        dead: list[DeadLetter] = []
        for record in records:
            try:
                message = decode(record.value)
                if not isinstance(message, DicomStateMeta):
                    raise InvalidInput(f"{type(message).__name__} does not belong on {record.topic}")
            except InvalidInput as exc:
                dead.append(DeadLetter(record, exc.reason))
                continue
            self.note(SeriesKey(message.tenant_id, message.study_instance_uid, message.series_instance_uid))
        return dead
