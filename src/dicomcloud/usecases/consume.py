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
    the first record of a batch for more, trading a little latency for fewer commits."""
    consumer = bus.consumer(group, topics)
    backoff = 0.1
    try:
        while not stop.is_set():
            records = await consumer.poll(max_records, poll_timeout)
            if not records:
                continue
            if linger and len(records) < max_records:
                await asyncio.sleep(linger)
                records += await consumer.poll(max_records - len(records), 0)
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
            except Exception:
                # Retry later: nothing committed, the batch comes again.
                log.exception("%s: batch of %d failed; retrying in %.1fs", group, len(records), backoff)
                await consumer.seek_to_committed()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, max_backoff)
    finally:
        await consumer.close()
