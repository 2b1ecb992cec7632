"""The WadoAccessLog (ARCHITECTURE §2 ``server``): every DICOMweb request, to the bus.

Writing the log never slows or fails the request it records. The HTTP edge
(``entrypoints/http/access_log.py``) only calls :meth:`AccessLog.append`, which
puts the record in a bounded in-memory queue and returns: when the queue is
full the oldest record is dropped and counted (logged once per
``report_every`` drops). A background task (:meth:`AccessLog.run`) publishes
batches to ``ACCESS_LOG_QUEUE`` every ``interval`` seconds, or as soon as
``batch_size`` records wait; a batch the bus refuses goes back to the front of
the queue and is retried after a growing pause, and the error stays here.
:meth:`AccessLog.close` publishes what is left (bounded by a timeout).

:func:`describe_route` names what a route template addresses (service and level).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from dicomcloud.domain.messages import ACCESS_LOG_QUEUE, WadoAccessed, encode
from dicomcloud.errors import DicomCloudError
from dicomcloud.ports import Bus

log = logging.getLogger(__name__)

QIDO_RS = "qido-rs"
WADO_RS = "wado-rs"
STOW_RS = "stow-rs"
WADO_URI = "wado-uri"


def describe_route(method: str, route: str) -> tuple[str, str]:
    """(service, level) of a route template relative to the service root.

    Level is the resource addressed: for QIDO-RS the level searched
    (``/studies/{study}/series`` → ``series``, PS3.18 §10.6); for WADO-RS the
    deepest UID in the path, or ``frames`` / ``bulkdata``; for STOW-RS ``study``;
    WADO-URI addresses an ``instance`` (PS3.18 §9). ``("", "")`` when no route matched
    or for a method no transaction uses (a CORS preflight ``OPTIONS``, a ``DELETE``).
    """
    if not route or method not in ("GET", "HEAD", "POST"):
        return "", ""
    if route == "/wado":
        return WADO_URI, "instance"
    if method == "POST":
        return STOW_RS, "study"
    segments = route.strip("/").split("/")
    if segments[-1] in ("studies", "series", "instances"):
        return QIDO_RS, {"studies": "study", "series": "series", "instances": "instance"}[segments[-1]]
    if "frames" in segments:
        return WADO_RS, "frames"
    if "bulkdata" in segments:
        return WADO_RS, "bulkdata"
    for name, level in (("{instance}", "instance"), ("{series}", "series"), ("{study}", "study")):
        if name in segments:
            return WADO_RS, level
    return "", ""


class AccessLog:
    """A bounded queue of access records and the task that publishes them."""

    def __init__(
        self,
        bus: Bus,
        *,
        capacity: int = 100_000,
        batch_size: int = 500,
        interval: float = 0.2,
        max_backoff: float = 5.0,
        report_every: int = 10_000,
    ) -> None:
        self._bus = bus
        self._queue: deque[WadoAccessed] = deque(maxlen=capacity)
        self._batch_size = batch_size
        self._interval = interval
        self._max_backoff = max_backoff
        self._report_every = report_every
        self._wakeup = asyncio.Event()
        self.dropped = 0  # records lost to a full queue, since the start
        self.published = 0

    def __len__(self) -> int:
        return len(self._queue)

    def append(self, record: WadoAccessed) -> None:
        """Queue a record; never blocks, never raises. Full: the oldest record is dropped."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            if self.dropped % self._report_every == 1 or self._report_every == 1:
                log.warning("access log: queue full (%d records), %d dropped so far", len(self._queue), self.dropped)
        self._queue.append(record)
        if len(self._queue) >= self._batch_size:
            self._wakeup.set()

    async def publish_once(self) -> int:
        """Publish one batch; on failure the batch goes back to the front of the queue
        (newer records win if it is full meanwhile) and the error is raised."""
        batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
        if not batch:
            return 0
        try:
            await self._bus.publish([(ACCESS_LOG_QUEUE, r.record_id, encode(r)) for r in batch])
        except BaseException:
            room = (self._queue.maxlen or len(batch)) - len(self._queue)
            keep = batch[len(batch) - room :] if room < len(batch) else batch
            self.dropped += len(batch) - len(keep)
            self._queue.extendleft(reversed(keep))
            raise
        self.published += len(batch)
        return len(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish batches until ``stop`` is set (then :meth:`close` flushes the rest)."""
        backoff = self._interval
        while not stop.is_set():
            # Healthy: a full batch wakes us early. Failing: the pause is kept, whatever arrives.
            waiting = self._wakeup.wait() if backoff <= self._interval else stop.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiting, backoff)
            self._wakeup.clear()
            try:
                while len(self._queue) > 0:
                    await self.publish_once()
                backoff = self._interval
            except DicomCloudError as exc:
                backoff = min(self._max_backoff, max(backoff * 2, self._interval))
                log.warning("access log: publishing failed (%s); %d records wait, retry in %.1f s",
                            exc, len(self._queue), backoff)  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception:
                backoff = min(self._max_backoff, max(backoff * 2, self._interval))
                log.exception("access log: publishing failed; %d records wait", len(self._queue))

    async def close(self, timeout: float = 5.0) -> None:
        """Publish what is queued, giving up after ``timeout`` seconds (logged)."""
        deadline = time.monotonic() + timeout
        while len(self._queue) > 0 and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self.publish_once(), max(0.01, deadline - time.monotonic()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus is gone or failing: retry until the deadline
                log.warning("access log: flushing at shutdown failed: %s", exc)
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        if len(self._queue) > 0:
            log.error("access log: %d records not published at shutdown", len(self._queue))
