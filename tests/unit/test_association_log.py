"""The store log's associations: records built from pynetdicom's events in whatever order
they come, the DimseAssociation message, and the bus log fed from other threads."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pynetdicom.pdu import A_ABORT_RQ

from dicomcloud.domain.messages import LOG_QUEUE, DimseAssociation, decode, encode
from dicomcloud.entrypoints.association_log import AssociationLog
from dicomcloud.errors import InvalidInput
from dicomcloud.usecases.bus_log import BusLog


@dataclass
class FakeDul:
    idle: bool = False

    def idle_timer_expired(self) -> bool:
        return self.idle


@dataclass(eq=False)
class FakeAssociation:
    address: str = "10.1.2.3"
    dul: FakeDul = field(default_factory=FakeDul)
    network_timeout: float = 60.0
    rejection: tuple[int, int, int] | None = None

    @property
    def requestor(self) -> Any:
        return SimpleNamespace(address=self.address, port=4242, ae_title="")

    @property
    def acceptor(self) -> Any:
        if self.rejection is None:
            return SimpleNamespace(primitive=None)
        result, source, diagnostic = self.rejection
        return SimpleNamespace(primitive=SimpleNamespace(result=result, result_source=source, diagnostic=diagnostic))


def event(assoc: FakeAssociation) -> Any:
    return SimpleNamespace(assoc=assoc)


class Recorder:
    def __init__(self) -> None:
        self.log = AssociationLog(self.sink)
        self.published: list[DimseAssociation] = []
        handlers = {e.name: h for e, h in self.log.handlers()}
        self.opened, self.rejected = handlers["EVT_CONN_OPEN"], handlers["EVT_REJECTED"]
        self.released, self.aborted = handlers["EVT_RELEASED"], handlers["EVT_ABORTED"]
        self.closed = handlers["EVT_CONN_CLOSE"]

    def sink(self, record: DimseAssociation) -> None:
        self.published.append(decode(encode(record)))  # what the loader will see


def test_released_association_with_its_counts() -> None:
    r, assoc = Recorder(), FakeAssociation()
    r.opened(event(assoc))
    r.log.requested(assoc, "hosp-a", "HOSPA", "CT1", admitted=True)
    assert r.log.tenant(assoc) == "hosp-a"
    for status in (0x0000, 0xB000, 0xC000, 0xA900, 0xC000):
        r.log.answered(assoc, status)
    r.log.received(assoc, 1000, object())
    r.log.received(assoc, 24, object())
    r.released(event(assoc))
    assert r.published == []  # the connection is still open
    r.closed(event(assoc))
    r.closed(event(assoc))  # never twice
    [row] = r.published
    assert (row.tenant_id, row.called_ae_title, row.calling_ae_title, row.address) == (
        "hosp-a", "HOSPA", "CT1", "10.1.2.3"
    )  # fmt: skip
    assert (row.outcome, row.reason) == ("released", "")
    assert (row.instances_stored, row.instances_failed, row.bytes_received) == (2, 3, 1024)
    assert row.failure_statuses == {"0xC000": 2, "0xA900": 1}
    assert datetime.fromisoformat(row.started_at) <= datetime.fromisoformat(row.ended_at)
    uuid.UUID(row.association_id)


def test_peer_abort_closes_the_connection_before_the_association_hears_of_it() -> None:
    r, assoc = Recorder(), FakeAssociation()
    r.opened(event(assoc))
    r.log.requested(assoc, "hosp-a", "HOSPA", "CT1", admitted=True)
    abort = A_ABORT_RQ()
    abort.source, abort.reason_diagnostic = 0, 0
    r.log.received(assoc, 10, abort)
    r.closed(event(assoc))
    assert r.published == []  # the outcome is not known yet
    r.aborted(event(assoc))
    [row] = r.published
    assert row.outcome == "aborted" and row.reason.startswith("A-ABORT from the peer (DUL service-user")


@pytest.mark.parametrize(
    ("idle", "reason"),
    [(True, "nothing received for 60.0 s (network timeout)"), (False, "the connection was lost without A-RELEASE")],
)
def test_abort_reasons(idle: bool, reason: str) -> None:
    r, assoc = Recorder(), FakeAssociation(dul=FakeDul(idle))
    r.opened(event(assoc))
    r.log.requested(assoc, "default", "DICOMCLOUD", "SCU", admitted=True)
    r.aborted(event(assoc))
    r.closed(event(assoc))
    [row] = r.published
    assert row.outcome == "aborted" and row.reason.startswith(reason)


def test_rejections() -> None:
    r = Recorder()
    ours, theirs = FakeAssociation(), FakeAssociation(rejection=(2, 3, 2))
    for assoc in (ours, theirs):
        r.opened(event(assoc))
    r.log.requested(ours, "hosp-a", "HOSPA", "OTHER", admitted=False)
    assert r.log.tenant(ours) == ""  # never stores
    r.log.refused(ours, "calling AE title 'OTHER' is not allowed")
    r.rejected(event(ours))
    r.log.requested(theirs, "default", "DICOMCLOUD", "SCU", admitted=True)
    r.rejected(event(theirs))  # pynetdicom's own: too many associations
    r.closed(event(ours))
    r.closed(event(theirs))
    assert [(row.tenant_id, row.outcome, row.reason) for row in r.published] == [
        ("hosp-a", "rejected", "calling AE title 'OTHER' is not allowed"),
        ("default", "rejected", "A-ASSOCIATE-RJ: local limit exceeded (too many associations)"),
    ]


def test_a_connection_without_a_request_is_not_an_association() -> None:
    r, probe, oversized = Recorder(), FakeAssociation(), FakeAssociation()
    r.opened(event(probe))
    r.closed(event(probe))
    r.opened(event(oversized))
    r.log.refused(oversized, "A-ASSOCIATE-RQ PDU of 4294967280 bytes, over the limit of 16777216 bytes")
    r.closed(event(oversized))
    [row] = r.published
    assert (row.tenant_id, row.calling_ae_title, row.outcome) == ("", "", "aborted")
    assert row.reason.startswith("A-ASSOCIATE-RQ PDU of 4294967280 bytes")


def test_an_association_pynetdicom_drops_silently_is_published_when_collected() -> None:
    r, assoc = Recorder(), FakeAssociation()
    r.opened(event(assoc))
    r.log.requested(assoc, "hosp-a", "HOSPA", "CT1", admitted=True)
    r.log.answered(assoc, 0)
    del assoc  # no EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE ever came
    [row] = r.published
    assert (row.outcome, row.instances_stored) == ("aborted", 1)
    assert row.reason == "the association ended without A-RELEASE"


def test_a_failing_sink_never_reaches_the_association() -> None:
    def sink(record: DimseAssociation) -> None:
        raise RuntimeError("the queue is gone")

    log, assoc = AssociationLog(sink), FakeAssociation()
    handlers = {e.name: h for e, h in log.handlers()}
    log.requested(assoc, "a", "A", "B", admitted=True)
    handlers["EVT_RELEASED"](event(assoc))
    handlers["EVT_CONN_CLOSE"](event(assoc))  # logged, not raised


ROW = DimseAssociation(
    association_id="00000000-0000-4000-8000-000000000001",
    tenant_id="hosp-a",
    calling_ae_title="CT1",
    called_ae_title="HOSPA",
    address="127.0.0.1",
    started_at="2026-01-02T03:04:05+00:00",
    ended_at="2026-01-02T03:04:06+00:00",
    outcome="released",
    reason="",
    instances_stored=3,
    instances_failed=1,
    failure_statuses={"0xC000": 1},
    bytes_received=123456,
)


def test_message_round_trip() -> None:
    assert decode(encode(ROW)) == ROW


@pytest.mark.parametrize(
    "change",
    [
        {"association_id": "not-a-uuid"},
        {"started_at": "yesterday"},
        {"outcome": "accepted?"},
        {"instances_stored": -1},
        {"bytes_received": "12"},
        {"failure_statuses": {"0xC000": -2}},
        {"failure_statuses": ["0xC000"]},
        {"reason": "a\x00b"},
    ],
)
def test_malformed_messages_are_refused(change: dict[str, Any]) -> None:
    body = orjson.loads(encode(ROW))
    body.update(change)
    with pytest.raises(InvalidInput, match="DimseAssociation"):
        decode(orjson.dumps(body))


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, bytes]] = []

    async def publish(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        self.published.extend(items)


async def test_records_appended_from_other_threads_are_published_promptly() -> None:
    """The DIMSE threads append; a full batch wakes the publisher on its loop's thread,
    long before its interval would."""
    bus = RecordingBus()
    log: BusLog[DimseAssociation] = BusLog(
        bus, LOG_QUEUE, lambda r: r.association_id, name="association log", batch_size=2, interval=30.0
    )  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(log.run(stop))
    await asyncio.sleep(0.05)
    rows = [replace(ROW, association_id=str(uuid.uuid4())) for _ in range(4)]
    threads = [threading.Thread(target=log.append, args=(row,)) for row in rows]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = time.monotonic()
    while len(bus.published) < 4 and time.monotonic() - started < 5.0:
        await asyncio.sleep(0.01)
    stop.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sorted(key for _, key, _ in bus.published) == sorted(r.association_id for r in rows)
    assert {topic for topic, _, _ in bus.published} == {LOG_QUEUE}
