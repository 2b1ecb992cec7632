"""See and replay dead letters: the messages ``consume`` gave up on (``<topic>.dlq``).

A dead letter is the JSON of :func:`dicomcloud.usecases.consume.dead_letter_value`:
the reason, and the original record's topic, partition, offset, key and value.

**Which ones.** Both commands work on the *pending* dead letters: those after
the offsets the replay group (:data:`REPLAY_GROUP`) committed. ``replay``
publishes the original values back to their original topics — durable, as any
publish — and only then commits the replay group past them, so a dead letter
is replayed once (at least once: should the commit fail after the publish, the
next replay sends it again, which the idempotent consumers absorb). ``list``
reads the same way as a member of that group but never commits, so it changes
nothing, and after a replay it no longer shows what was replayed: a message
that fails again shows up once, as the new dead letter it became.

**Where the end is.** The Bus port has no "end of topic": both commands poll
until a poll returns nothing. On the embedded journal the records are in
memory and a poll with no wait answers at once (``idle=0``). On Kafka a
consumer first has to join the group and be assigned its partitions (seconds),
so the commands wait up to ``first_wait`` for that (a consumer that can tell its
assignment is asked, and :class:`Unavailable` raised when none comes: an
unreachable broker must not look like an empty queue), and after that take
``idle`` seconds without a record as the end. ``replay`` reads up to
that end *before* publishing anything, so a replayed message that a running
consumer dead-letters again right away is not replayed a second time in the
same run.

Not replayed: a dead letter that is not our JSON (reported, and committed
past so it does not block the rest). Values were stored as UTF-8 text; our
messages are JSON, so they come back byte for byte.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson

from dicomcloud.domain.messages import ALL_TOPICS, DEAD_LETTER_SUFFIX, dead_letter_topic
from dicomcloud.errors import InvalidQuery, Unavailable
from dicomcloud.ports import Bus, BusConsumer, Record

REPLAY_GROUP = "dlq-replay"
BATCH = 500


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One dead letter: where it sits in ``<topic>.dlq``, and what it holds."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    reason: str
    topic: str  # the original record's
    partition: int
    offset: int
    key: str
    value: str  # the original value (UTF-8 text)
    readable: bool = True  # False: not a dead letter of ours; cannot be replayed

    @classmethod
    def from_record(cls, record: Record) -> DeadLetterEntry:
        try:
            body = orjson.loads(record.value)
            return cls(
                dlq_topic=record.topic,
                dlq_partition=record.partition,
                dlq_offset=record.offset,
                reason=str(body["reason"]),
                topic=str(body["topic"]),
                partition=int(body["partition"]),
                offset=int(body["offset"]),
                key=str(body["key"]),
                value=str(body["value"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return cls(
                dlq_topic=record.topic,
                dlq_partition=record.partition,
                dlq_offset=record.offset,
                reason=f"not a dead letter of dicomcloud: {type(exc).__name__}: {exc}",
                topic="",
                partition=-1,
                offset=-1,
                key=record.key,
                value=record.value.decode("utf-8", "replace"),
                readable=False,
            )

    def as_json(self) -> dict[str, Any]:
        return {
            "dlq_topic": self.dlq_topic,
            "dlq_partition": self.dlq_partition,
            "dlq_offset": self.dlq_offset,
            "reason": self.reason,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "value": self.value,
            "replayable": self.readable,
        }


@dataclass(frozen=True, slots=True)
class ReplayReport:
    replayed: list[DeadLetterEntry]
    not_replayable: list[DeadLetterEntry]


@runtime_checkable
class _Assigned(Protocol):
    """A consumer that can tell which partitions it holds (the Kafka adapter's)."""

    async def assignment(self) -> list[tuple[str, int]]: ...


def dlq_topics(topics: Sequence[str] = ()) -> list[str]:
    """The dead-letter topics of ``topics`` (``storage_queue`` or ``storage_queue.dlq``); all by default."""
    if not topics:
        return [dead_letter_topic(t) for t in ALL_TOPICS]
    out = []
    for topic in topics:
        base = topic.removesuffix(DEAD_LETTER_SUFFIX)
        if base not in ALL_TOPICS:
            raise InvalidQuery(f"unknown topic {topic!r}; known: {', '.join(ALL_TOPICS)}")
        out.append(dead_letter_topic(base))
    return list(dict.fromkeys(out))


async def _read_to_end(consumer: BusConsumer, first_wait: float, idle: float) -> list[Record]:
    """Poll until a poll of ``idle`` seconds brings nothing (see the module docstring)."""
    records: list[Record] = []
    wait = max(idle, first_wait)  # for the first record
    if isinstance(consumer, _Assigned):
        deadline = time.monotonic() + first_wait
        while not await consumer.assignment():  # the group is joined while polling
            if time.monotonic() >= deadline:
                raise Unavailable(f"the bus assigned no partitions to {REPLAY_GROUP!r} within {first_wait:g} s")
            records += await consumer.poll(BATCH, 0.2)
        wait = idle  # assigned: it fetches from the committed offsets at once
    while batch := await consumer.poll(BATCH, idle if records else wait):
        records += batch
    return records


async def list_dead_letters(
    bus: Bus, topics: Sequence[str] = (), *, first_wait: float = 0.0, idle: float = 0.0
) -> list[DeadLetterEntry]:
    """The pending dead letters of ``topics`` (all topics by default), oldest first; commits nothing."""
    consumer = bus.consumer(REPLAY_GROUP, dlq_topics(topics))
    try:
        records = await _read_to_end(consumer, first_wait, idle)
    finally:
        await consumer.close()
    return [DeadLetterEntry.from_record(r) for r in records]


async def replay_dead_letters(
    bus: Bus, topics: Sequence[str] = (), *, first_wait: float = 0.0, idle: float = 0.0
) -> ReplayReport:
    """Publish each pending dead letter's original value to its original topic, then commit past it."""
    consumer = bus.consumer(REPLAY_GROUP, dlq_topics(topics))
    replayed: list[DeadLetterEntry] = []
    not_replayable: list[DeadLetterEntry] = []
    try:
        records = await _read_to_end(consumer, first_wait, idle)
        for start in range(0, len(records), BATCH):
            chunk = records[start : start + BATCH]
            entries = [DeadLetterEntry.from_record(r) for r in chunk]
            good = [e for e in entries if e.readable]
            await bus.publish([(e.topic, e.key, e.value.encode()) for e in good])
            await consumer.commit(chunk)
            replayed += good
            not_replayable += [e for e in entries if not e.readable]
    finally:
        await consumer.close()
    return ReplayReport(replayed, not_replayable)
