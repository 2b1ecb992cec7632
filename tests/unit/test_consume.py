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


class FlakyBus:
    """A real JournalBus whose consumers fail to rewind twice and to poll once, as during a broker outage."""

    def __init__(self, bus: JournalBus) -> None:
        self.bus = bus
        self.seek_failures = 2
        self.poll_failures = 1
        self.consumers = 0

    async def publish(self, items: list[tuple[str, str, bytes]]) -> None:
        await self.bus.publish(items)

    def consumer(self, group: str, topics: list[str]) -> object:
        self.consumers += 1
        inner = self.bus.consumer(group, topics)
        flaky = self

        class Consumer:
            async def poll(self, max_records: int, timeout: float) -> list[Record]:
                if flaky.poll_failures and flaky.seek_failures == 0:
                    flaky.poll_failures -= 1
                    raise ConnectionError("broker away")
                return await inner.poll(max_records, timeout)

            async def commit(self, records: list[Record]) -> None:
                await inner.commit(records)

            async def seek_to_committed(self) -> None:
                if flaky.seek_failures:
                    flaky.seek_failures -= 1
                    raise ConnectionError("coordinator away")
                await inner.seek_to_committed()

            async def close(self) -> None:
                await inner.close()

        return Consumer()


async def test_the_loop_outlives_failed_rewinds_and_polls_without_skipping_a_batch() -> None:
    bus = JournalBus(None)
    flaky = FlakyBus(bus)
    await bus.publish([("t", "k", b"1"), ("t", "k", b"2")])
    handled: list[bytes] = []
    stop = asyncio.Event()
    calls = 0

    async def handler(records: list[Record]) -> list[DeadLetter]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await bus.publish([("t", "k", b"3")])  # arrives while the first batch fails
            raise ConnectionError("index down")
        handled.extend(r.value for r in records)
        if b"3" in handled:
            stop.set()
        return []

    await asyncio.wait_for(
        consume(flaky, "g", ["t"], handler, stop, poll_timeout=0.05, max_backoff=0.05),  # type: ignore[arg-type]
        5.0,
    )
    assert handled[:2] == [b"1", b"2"], "the failed batch comes again first, nothing skipped"
    assert sorted(handled) == [b"1", b"2", b"3"]
    assert flaky.seek_failures == 0 and flaky.poll_failures == 0 and flaky.consumers == 2
    await bus.close()
