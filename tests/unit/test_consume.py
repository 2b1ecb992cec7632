"""The shared consumer loop: done, retry later (uncommitted, redelivered), dead-letter."""

from __future__ import annotations

import asyncio

import orjson

from dicomcloud.adapters.journal_bus import JournalBus
from dicomcloud.ports import Record
from dicomcloud.usecases.consume import consume
from dicomcloud.usecases.index_instances import DeadLetter


async def test_failed_batch_is_redelivered_and_poison_is_dead_lettered() -> None:
    bus = JournalBus(None)
    await bus.publish([("t", "k", b"good"), ("t", "k", b"poison"), ("t", "k", b"good2")])
    seen: list[list[bytes]] = []
    stop = asyncio.Event()

    async def handler(records: list[Record]) -> list[DeadLetter]:
        seen.append([r.value for r in records])
        if len(seen) == 1:
            raise ConnectionError("store down")  # retry later: nothing committed
        if sum(len(batch) for batch in seen[1:]) >= 3:
            stop.set()
        return [DeadLetter(r, "can never succeed") for r in records if r.value == b"poison"]

    await asyncio.wait_for(consume(bus, "g", ["t"], handler, stop, poll_timeout=0.05), 5.0)
    assert seen[0] == [b"good", b"poison", b"good2"]
    assert sorted(v for batch in seen[1:] for v in batch) == [b"good", b"good2", b"poison"]
    dlq = await bus.consumer("ops", ["t.dlq"]).poll(10, 0)
    letter = orjson.loads(dlq[0].value)
    assert (letter["reason"], letter["value"], letter["topic"]) == ("can never succeed", "poison", "t")
    assert await bus.consumer("g", ["t"]).poll(10, 0) == []  # everything committed
    await bus.close()
