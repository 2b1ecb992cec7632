"""A log written to the bus without ever slowing or failing what it records.

The recording side only calls :meth:`BusLog.append`, which puts the record in a
bounded in-memory queue and returns; it may be called from the event loop or from
any other thread (the DIMSE association threads). When the queue is full the
oldest record is dropped and counted (logged once per ``report_every`` drops). A
background task (:meth:`BusLog.run`) publishes batches to the log's topic every
``interval`` seconds, or as soon as ``batch_size`` records wait; a batch the bus
refuses goes back to the front of the queue and is retried after a growing pause,
and the error stays here. :meth:`BusLog.close` publishes what is left (bounded by
a timeout).

Used by the WadoAccessLog (``usecases/access_log.py``) and the DIMSE association
log (``entrypoints/association_log.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

from dicomcloud.domain.messages import Message, encode
from dicomcloud.errors import DicomCloudError
from dicomcloud.ports import Bus

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class BusLog(Generic[M]):
    """A bounded queue of records and the task that publishes them to ``topic``."""

    def __init__(
        self,
        bus: Bus,
        topic: str,
        key: Callable[[M], str],
        *,
        name: str,
        capacity: int = 100_000,
        batch_size: int = 500,
        interval: float = 0.2,
        max_backoff: float = 5.0,
        report_every: int = 10_000,
    ) -> None:
        self._bus = bus
        self._topic = topic
        self._key = key
        self._name = name
        self._queue: deque[M] = deque(maxlen=capacity)
        self._batch_size = batch_size
        self._interval = interval
        self._max_backoff = max_backoff
        self._report_every = report_every
        self._wakeup = asyncio.Event()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # run() sets it
        self.dropped = 0  # records lost to a full queue, since the start
        self.published = 0

    def __len__(self) -> int:
        return len(self._queue)

    def append(self, record: M) -> None:
        """Queue a record; never blocks, never raises. Full: the oldest record is dropped."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            if self.dropped % self._report_every == 1 or self._report_every == 1:
                log.warning("%s: queue full (%d records), %d dropped so far",
                            self._name, len(self._queue), self.dropped)  # fmt: skip
        self._queue.append(record)
        if len(self._queue) >= self._batch_size:
            self._wake()

    def _wake(self) -> None:
        """Set the wakeup event on its loop's thread (asyncio.Event is not thread-safe)."""
        loop = self._loop
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if loop is None or on_loop:
            self._wakeup.set()
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: close() has flushed already
            loop.call_soon_threadsafe(self._wakeup.set)

    async def publish_once(self) -> int:
        """Publish one batch; on failure the batch goes back to the front of the queue
        (newer records win if it is full meanwhile) and the error is raised."""
        batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
        if not batch:
            return 0
        try:
            await self._bus.publish([(self._topic, self._key(r), encode(r)) for r in batch])
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
        self._loop = asyncio.get_running_loop()
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
                log.warning("%s: publishing failed (%s); %d records wait, retry in %.1f s",
                            self._name, exc, len(self._queue), backoff)  # fmt: skip
            except asyncio.CancelledError:
                raise
            except Exception:
                backoff = min(self._max_backoff, max(backoff * 2, self._interval))
                log.exception("%s: publishing failed; %d records wait", self._name, len(self._queue))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Publish in the background while the block runs; afterwards flush what is left
        (the service has recorded its last request or association by then)."""
        stop = asyncio.Event()
        publisher = asyncio.create_task(self.run(stop))
        try:
            yield
        finally:
            stop.set()
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
            await self.close()

    async def close(self, timeout: float = 5.0) -> None:
        """Publish what is queued, giving up after ``timeout`` seconds (logged)."""
        deadline = time.monotonic() + timeout
        while len(self._queue) > 0 and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self.publish_once(), max(0.01, deadline - time.monotonic()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the bus is gone or failing: retry until the deadline
                log.warning("%s: flushing at shutdown failed: %s", self._name, exc)
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        if len(self._queue) > 0:
            log.error("%s: %d records not published at shutdown", self._name, len(self._queue))
