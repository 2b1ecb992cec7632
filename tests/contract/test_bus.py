"""The Bus contract, on the in-memory and the durable journal bus.

(The Kafka adapter joins the parametrisation with issue 3.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dicomcloud.adapters.journal_bus import JOURNAL, JournalBus


@pytest.fixture(params=["memory", "journal"])
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JournalBus]:
    b = JournalBus(None if request.param == "memory" else tmp_path / "bus")
    yield b
    await b.close()


async def test_records_arrive_in_order_per_topic(bus: JournalBus) -> None:
    await bus.publish([("a", "k1", b"1"), ("b", "k1", b"x"), ("a", "k2", b"2")])
    consumer = bus.consumer("g", ["a"])
    records = await consumer.poll(10, 0)
    assert [r.value for r in records] == [b"1", b"2"]
    assert records[0].offset < records[1].offset


async def test_uncommitted_records_are_redelivered_after_seek(bus: JournalBus) -> None:
    await bus.publish([("a", "k", b"1"), ("a", "k", b"2")])
    consumer = bus.consumer("g", ["a"])
    first = await consumer.poll(1, 0)
    await consumer.commit(first)
    assert [r.value for r in await consumer.poll(10, 0)] == [b"2"]
    await consumer.seek_to_committed()  # retry later: the uncommitted one comes again
    assert [r.value for r in await consumer.poll(10, 0)] == [b"2"]


async def test_groups_are_independent(bus: JournalBus) -> None:
    await bus.publish([("a", "k", b"1")])
    one, two = bus.consumer("one", ["a"]), bus.consumer("two", ["a"])
    await one.commit(await one.poll(10, 0))
    assert [r.value for r in await two.poll(10, 0)] == [b"1"]


async def test_poll_wakes_up_on_publish(bus: JournalBus) -> None:
    consumer = bus.consumer("g", ["a"])
    waiting = asyncio.create_task(consumer.poll(10, 5.0))
    await asyncio.sleep(0.05)
    await bus.publish([("a", "k", b"late")])
    records = await asyncio.wait_for(waiting, 2.0)
    assert [r.value for r in records] == [b"late"]


async def test_publishers_in_threads_share_flushes(bus: JournalBus) -> None:
    items = [[("a", f"k{i}", str(i).encode())] for i in range(40)]
    await asyncio.gather(*(asyncio.to_thread(bus.publish_blocking, it) for it in items))
    await asyncio.sleep(0)  # visibility is scheduled on the loop
    records = await bus.consumer("g", ["a"]).poll(100, 0.5)
    assert sorted(int(r.value) for r in records) == list(range(40))


async def test_journal_survives_restart_and_drops_only_committed(tmp_path: Path) -> None:
    bus = JournalBus(tmp_path)
    await bus.publish([("a", "k", b"1"), ("a", "k", b"2"), ("a", "k", b"3")])
    consumer = bus.consumer("g", ["a"])
    await consumer.commit(await consumer.poll(1, 0))
    await bus.close()

    again = JournalBus(tmp_path)
    records = await again.consumer("g", ["a"]).poll(10, 0)
    assert [r.value for r in records] == [b"2", b"3"]
    await again.close()


async def test_torn_tail_is_cut_and_earlier_records_kept(tmp_path: Path) -> None:
    bus = JournalBus(tmp_path)
    await bus.publish([("a", "k", b"kept")])
    await bus.close()
    with open(tmp_path / JOURNAL, "ab") as f:  # a crash in the middle of an append
        f.write(b"\xd1\x01\x00\x01\x00\x10\x00\x00\x00ak12345")
    again = JournalBus(tmp_path)
    assert [r.value for r in await again.consumer("g", ["a"]).poll(10, 0)] == [b"kept"]
    await again.publish([("a", "k", b"after")])
    await again.close()
    third = JournalBus(tmp_path)
    assert [r.value for r in await third.consumer("g", ["a"]).poll(10, 0)] == [b"kept", b"after"]
    await third.close()


async def test_compaction_keeps_offsets_and_uncommitted_records(tmp_path: Path) -> None:
    bus = JournalBus(tmp_path, compact_bytes=200)
    consumer = bus.consumer("g", ["a"])
    for i in range(30):
        await bus.publish([("a", "k", f"value-{i:03d}".encode())])
    records = await consumer.poll(25, 0)
    await consumer.commit(records)  # over the threshold: compacts the committed head
    size_after = os.path.getsize(tmp_path / JOURNAL)
    await bus.close()
    assert size_after < 30 * 20

    again = JournalBus(tmp_path)
    rest = await again.consumer("g", ["a"]).poll(100, 0)
    assert [r.value for r in rest] == [f"value-{i:03d}".encode() for i in range(25, 30)]
    assert [r.offset for r in rest] == [records[-1].offset + 1 + i for i in range(5)]
    await again.close()


async def test_closed_bus_refuses_to_publish(tmp_path: Path) -> None:
    from dicomcloud.errors import Unavailable

    bus = JournalBus(tmp_path)
    await bus.close()
    with pytest.raises(Unavailable):
        await bus.publish([("a", "k", b"1")])
