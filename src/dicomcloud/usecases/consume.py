"""Run a batch handler over a consumer group: done, dead-letter, or retry later.

The one loop every bus-driven service shares (consumer, loader, webworker).
Offsets are committed only after the handler's effects are durable; a batch
whose handler raises is not committed and is delivered again after a backoff.
Dead letters go to ``<topic>.dlq`` with the reason and the original message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import orjson

from dicomcloud.domain.messages import dead_letter_topic
from dicomcloud.errors import DicomCloudError
from dicomcloud.ports import Bus, Record
from dicomcloud.usecases.index_instances import DeadLetter

log = logging.getLogger(__name__)

Handler = Callable[[list[Record]], Awaitable[list[DeadLetter]]]


def dead_letter_value(letter: DeadLetter) -> bytes:
    return orjson.dumps(
        {
            "reason": letter.reason,
            "topic": letter.record.topic,
            "partition": letter.record.partition,
            "offset": letter.record.offset,
            "key": letter.record.key,
            "value": letter.record.value.decode("utf-8", "replace"),
        }
    )


async def consume(
    bus: Bus,
    group: str,
    topics: Sequence[str],
    handler: Handler,
    stop: asyncio.Event,
    *,
    max_records: int = 500,
    poll_timeout: float = 0.2,
    max_backoff: float = 10.0,
    linger: float = 0.0,
) -> None:
    """Consume ``topics`` as ``group`` until ``stop``; ``linger`` waits that long after
    the first record of a batch for more, trading a little latency for fewer commits.

    Never gives up on a bus or store outage: a failed batch is delivered again once
    the consumer could rewind to the committed offsets — nothing after a failed
    batch is handled (let alone committed) before that — and a consumer whose polls
    fail is replaced by a new one, after a backoff that grows to ``max_backoff``.
    """
    consumer = bus.consumer(group, topics)
    backoff = 0.1
    rewind = False

    async def pause() -> None:
        nonlocal backoff
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff)
        backoff = min(backoff * 2, max_backoff)

    try:
        while not stop.is_set():
            if rewind:
                try:
                    await consumer.seek_to_committed()
                    rewind = False
                except Exception as exc:
                    log.warning("%s: cannot rewind yet (%s); retrying in %.1fs", group, _reason(exc), backoff)
                    await pause()
                    continue
            try:
                records = await consumer.poll(max_records, poll_timeout)
                if records and linger and len(records) < max_records:
                    await asyncio.sleep(linger)
                    records += await consumer.poll(max_records - len(records), 0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: poll failed (%s); a new consumer in %.1fs", group, _reason(exc), backoff)
                with contextlib.suppress(Exception):
                    await consumer.close()
                await pause()
                consumer = bus.consumer(group, topics)
                continue
            if not records:
                continue
            try:
                dead = await handler(records)
                if dead:
                    await bus.publish(
                        [(dead_letter_topic(d.record.topic), d.record.key, dead_letter_value(d)) for d in dead]
                    )
                    for d in dead:
                        log.warning("dead-lettered %s@%s: %s", d.record.topic, d.record.offset, d.reason)
                await consumer.commit(records)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Retry later: nothing committed, the batch comes again after a rewind.
                if isinstance(exc, DicomCloudError):
                    log.warning("%s: batch of %d failed (%s); retrying in %.1fs", group, len(records), exc.reason,
                                backoff)  # fmt: skip
                else:
                    log.exception("%s: batch of %d failed; retrying in %.1fs", group, len(records), backoff)
                rewind = True
                await pause()
    finally:
        with contextlib.suppress(Exception):
            await consumer.close()


def _reason(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, DicomCloudError) else repr(exc)
