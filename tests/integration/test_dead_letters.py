"""``dicomcloud dlq list|replay`` over the journal bus and Kafka, with the real consumer loop.

A poison record — an InstanceStored whose file is gone — is dead-lettered by
``consume``; ``list`` shows it with its reason and changes nothing; ``replay``
puts it back on ``storage_queue`` once; once the file is back, a replay indexes it.
Kafka joins when ``DICOMCLOUD_TEST_KAFKA`` names a broker (see tests/contract/test_bus.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from dicomcloud.adapters.journal_bus import JournalBus
from dicomcloud.bootstrap import Archive, open_archive
from dicomcloud.domain.layout import InstanceKey, instance_path
from dicomcloud.domain.messages import STORAGE_QUEUE, InstanceStored, Source, dead_letter_topic, decode, encode
from dicomcloud.entrypoints.cli import main
from dicomcloud.errors import InvalidQuery
from dicomcloud.ports import Record
from dicomcloud.settings import Settings
from dicomcloud.usecases.consume import consume
from dicomcloud.usecases.dead_letters import DeadLetterEntry, dlq_topics, list_dead_letters, replay_dead_letters
from tests.contract.test_bus import kafka_url, needs_kafka
from tests.factory import make_instance, part10_bytes

pytestmark = pytest.mark.integration
SOURCE = Source("dimse", "SCU", "DICOMCLOUD", "127.0.0.1")
WAIT = 30.0


@dataclass
class Running:
    archive: Archive
    waits: dict[str, float]
    dead: list[Record]  # every record that reached storage_queue.dlq, seen by an observer group

    async def wait_dead(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while len(self.dead) < count:
            assert time.monotonic() < deadline, f"{len(self.dead)} of {count} dead letters after {WAIT} s"
            await asyncio.sleep(0.05)

    async def dead_letters(self) -> list[DeadLetterEntry]:
        return await list_dead_letters(self.archive.bus, [STORAGE_QUEUE], **self.waits)

    async def replay(self) -> list[DeadLetterEntry]:
        report = await replay_dead_letters(self.archive.bus, [STORAGE_QUEUE], **self.waits)
        assert report.not_replayable == []
        return report.replayed


@pytest.fixture(params=["journal", pytest.param("kafka", marks=needs_kafka)])
async def running(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> AsyncIterator[Running]:
    """An archive with the real consumer loop running over storage_queue."""
    kafka = request.param == "kafka"
    bus_url = kafka_url(partitions=1) if kafka else ""
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=database_url, bus_url=bus_url))
    stop = asyncio.Event()
    state = Running(archive, {"first_wait": WAIT, "idle": 1.5} if kafka else {}, [])

    async def observe() -> None:
        observer = archive.bus.consumer("observer", [dead_letter_topic(STORAGE_QUEUE)])
        try:
            while not stop.is_set():
                state.dead += await observer.poll(100, 0.2)
        finally:
            await observer.close()

    tasks = [
        asyncio.create_task(consume(archive.bus, "consumer", [STORAGE_QUEUE], archive.index_instances.handle, stop)),
        asyncio.create_task(observe()),
    ]
    try:
        yield state
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await archive.close()


def _event(ds: Any) -> tuple[InstanceKey, bytes]:
    """The InstanceStored event of ``ds``, as Ingest publishes it."""
    key = InstanceKey("default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    event = InstanceStored(
        tenant_id="default",
        study_instance_uid=key.study_instance_uid,
        series_instance_uid=key.series_instance_uid,
        sop_instance_uid=key.sop_instance_uid,
        sop_class_uid=ds.SOPClassUID,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id=ds.PatientID,
        file_name=f"{key.sop_instance_uid}.dcm",
        file_path=instance_path(key),
        file_size=len(part10_bytes(ds)),
        received_at="2024-01-01T00:00:00+00:00",
        source=SOURCE,
    )
    return key, encode(event)


async def test_dead_letter_is_listed_replayed_once_and_indexed_when_fixed(running: Running) -> None:
    archive = running.archive
    ds = make_instance(PatientID="DLQ-1", rows=16, columns=16)
    key, value = _event(ds)  # its file was lost (a disk fault after the acknowledgement)
    await archive.bus.publish([(STORAGE_QUEUE, key.study_instance_uid, value)])
    await running.wait_dead(1)

    (entry,) = await running.dead_letters()
    assert entry.readable and entry.topic == STORAGE_QUEUE and entry.dlq_topic == "storage_queue.dlq"
    assert entry.key == key.study_instance_uid
    assert "is missing" in entry.reason
    event = decode(entry.value.encode())
    assert event.sop_instance_uid == key.sop_instance_uid  # type: ignore[union-attr]
    assert entry.as_json()["reason"] == entry.reason
    assert [e.dlq_offset for e in await running.dead_letters()] == [entry.dlq_offset]  # listing commits nothing

    # Replayed while the file is still missing: dead-lettered again, listed once.
    assert [e.dlq_offset for e in await running.replay()] == [entry.dlq_offset]
    await running.wait_dead(2)
    (again,) = await running.dead_letters()
    assert again.dlq_offset != entry.dlq_offset and again.value == entry.value and "is missing" in again.reason
    assert again.offset != entry.offset  # the replayed copy's own offset on storage_queue

    # The cause fixed, a replay indexes it and the queue is empty.
    archive.blobs.write_atomic(instance_path(key), part10_bytes(ds))
    assert [e.dlq_offset for e in await running.replay()] == [again.dlq_offset]
    deadline = time.monotonic() + WAIT
    while (state := await archive.index.series_state(key.series)) is None:
        assert time.monotonic() < deadline, "the replayed instance was not indexed"
        await asyncio.sleep(0.1)
    assert state.number_of_series_related_instances == 1
    assert await running.dead_letters() == []
    assert await running.replay() == []
    assert len(running.dead) == 2


async def test_foreign_dead_letter_is_reported_not_replayed(tmp_path: Path) -> None:
    bus = JournalBus(tmp_path / "bus")
    try:
        letter = {"reason": "r", "topic": STORAGE_QUEUE, "partition": 0, "offset": 7, "key": "1.2", "value": "{}"}
        await bus.publish([("storage_queue.dlq", "k", b"not json"), ("storage_queue.dlq", "1.2", orjson.dumps(letter))])
        first, second = await list_dead_letters(bus)
        assert not first.readable and "not a dead letter" in first.reason
        assert second.readable and (second.topic, second.offset, second.value) == (STORAGE_QUEUE, 7, "{}")
        report = await replay_dead_letters(bus)
        assert [e.dlq_offset for e in report.replayed] == [second.dlq_offset]
        assert [e.dlq_offset for e in report.not_replayable] == [first.dlq_offset]
        assert await list_dead_letters(bus) == []
        replayed = await bus.consumer("check", [STORAGE_QUEUE]).poll(10, 0)
        assert [(r.key, r.value) for r in replayed] == [("1.2", b"{}")]
    finally:
        await bus.close()


def test_topics() -> None:
    assert dlq_topics(["storage_queue", "storage_queue.dlq", "log_queue"]) == ["storage_queue.dlq", "log_queue.dlq"]
    assert "dicom_image_queue.dlq" in dlq_topics()
    with pytest.raises(InvalidQuery):
        dlq_topics(["nope"])


def _cli(*argv: str) -> int:
    with ThreadPoolExecutor(1) as pool:  # main() runs its own event loop
        return pool.submit(main, list(argv)).result()


def _in_loop(coro: Callable[[], Awaitable[Any]]) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro()).result()


def test_cli_list_and_replay_on_the_embedded_bus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_instance(PatientID="DLQ-2", rows=16, columns=16)
    key, value = _event(ds)
    letter = {"reason": "stored file x.dcm is missing", "topic": STORAGE_QUEUE, "partition": 0, "offset": 3}
    letter |= {"key": key.study_instance_uid, "value": value.decode()}

    async def publish() -> None:
        bus = JournalBus(tmp_path / "bus")
        await bus.publish([("storage_queue.dlq", key.study_instance_uid, orjson.dumps(letter))])
        await bus.close()

    _in_loop(publish)
    base = ("--data-dir", str(tmp_path), "--log-level", "WARNING")
    assert _cli("dlq", "list", *base) == 0
    out = capsys.readouterr().out
    assert "storage_queue.dlq[0]@0  from storage_queue[0]@3" in out
    assert "reason: stored file x.dcm is missing" in out and "…" in out  # the value is cut short
    assert "1 dead letter(s) pending" in out
    assert _cli("dlq", "list", "--json", "--topic", "storage_queue", *base) == 0
    (shown,) = orjson.loads(capsys.readouterr().out)
    assert shown["value"] == value.decode() and shown["offset"] == 3
    assert _cli("dlq", "list", "--topic", "log_queue", *base) == 0
    assert "0 dead letter(s) pending" in capsys.readouterr().out

    # While `dicomcloud up` holds the embedded bus, the command says so.
    async def hold_and_try() -> int:
        bus = JournalBus(tmp_path / "bus")
        try:
            return await asyncio.to_thread(main, ["dlq", "replay", *base])
        finally:
            await bus.close()

    assert _in_loop(hold_and_try) == 1
    err = capsys.readouterr().err
    assert "in use by another dicomcloud process" in err and "only while that is stopped" in err

    assert _cli("dlq", "replay", *base) == 0
    assert "1 dead letter(s) replayed" in capsys.readouterr().out
    assert _cli("dlq", "list", *base) == 0
    assert "0 dead letter(s) pending" in capsys.readouterr().out

    async def replayed() -> list[Record]:
        bus = JournalBus(tmp_path / "bus")
        try:
            return await bus.consumer("check", [STORAGE_QUEUE]).poll(10, 0)
        finally:
            await bus.close()

    assert [r.value for r in _in_loop(replayed)] == [value]
