"""Distributed mode: every service its own process, joined by a real Kafka broker,
indexing into a real PostgreSQL — and no acknowledged instance lost when any of
them is killed (ARCHITECTURE §2, §6.1).

The senders are DCMTK ``storescu`` processes that resend what did not get a
Success (as modalities do); the checks read through the DICOMweb API with
httpx and dicomweb-client, against pydicom's reading of the files sent.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from tests.e2e.conftest import fresh_database
from tests.e2e.stack import (
    KafkaBroker,
    PostgresCluster,
    Sender,
    Stack,
    kafka_url,
    qido_instances,
    wait_until,
)
from tests.factory import dataset_bytes, part10_bytes, write_series, write_studies

pytestmark = pytest.mark.e2e

ALL = ("storescp", "consumer-1", "consumer-2", "loader", "webworker", "server-1", "server-2")


def _require(*names: str) -> None:
    for name in names:
        if not os.environ.get(name):
            pytest.skip(f"{name} is not set (scripts/test.sh starts the servers)")
    if shutil.which("storescu") is None:
        pytest.fail("DCMTK's storescu is not installed (scripts/install-deps.sh installs it)")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    _require("DICOMCLOUD_TEST_KAFKA", "DICOMCLOUD_TEST_DATABASE_URL")
    with fresh_database() as database_url:
        s = Stack(
            data_dir=tmp_path / "data",
            database_url=database_url,
            bus_url=kafka_url(os.environ["DICOMCLOUD_TEST_KAFKA"]),
            log_dir=tmp_path,
            redis_url=os.environ.get("DICOMCLOUD_TEST_REDIS", ""),
        )
        try:
            yield s
        finally:
            s.stop_all()


@dataclass(frozen=True)
class Sent:
    path: Path
    study: str
    series: str
    sop: str


def _describe(paths: list[Path]) -> dict[Path, Sent]:
    out = {}
    for p in paths:
        ds = dcmread(p, stop_before_pixels=True)
        out[p] = Sent(p, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    return out


def _files(directory: Path, studies: int, series: int, instances: int) -> dict[Path, Sent]:
    return _describe(write_studies(directory, studies=studies, series_per_study=series, instances=instances,
                                   rows=64, columns=64))  # fmt: skip


def _by_series(sent: dict[Path, Sent]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for s in sent.values():
        out[s.series].add(s.sop)
    return out


def _searchable(url: str, sent: dict[Path, Sent], must: set[Path]) -> object:
    """True when every file of ``must`` is listed by QIDO, else what is missing."""
    by_study: dict[str, set[str]] = defaultdict(set)
    for p in must:
        by_study[sent[p].study].add(sent[p].sop)
    missing = 0
    for study, sops in by_study.items():
        listed = {str(i["00080018"]["Value"][0]) for i in qido_instances(url, study)}  # type: ignore[index]
        missing += len(sops - listed)
    return True if missing == 0 else f"{missing} not yet searchable"


def diagnose(stack: Stack) -> str:
    """Where the pipeline stands: rows per table, and each consumer group's lag."""
    import asyncpg
    from confluent_kafka import Consumer, TopicPartition

    from tests.conftest import run_sync

    async def counts() -> str:
        conn = await asyncpg.connect(stack.database_url)
        try:
            index = await conn.fetchval("SELECT count(*) FROM dicom_index.instance")
            warehouse = await conn.fetchval("SELECT count(*) FROM warehouse.dicom_image_meta")
            return f"index instances {index}, warehouse dicom_image_meta {warehouse}"
        finally:
            await conn.close()

    lines = [run_sync(counts())]
    address = stack.bus_url.removeprefix("kafka://").split("?")[0]
    prefix = stack.bus_url.split("prefix=")[1].split("&")[0]
    for group, topic in (("consumer", "storage_queue"), ("loader", "dicom_image_queue")):
        c = Consumer({"bootstrap.servers": address, "group.id": prefix + group, "enable.auto.commit": False})
        try:
            parts = [TopicPartition(prefix + topic, p) for p in range(4)]
            committed = c.committed(parts, timeout=10)
            ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
            lines.append(f"{group}: committed {[tp.offset for tp in committed]} of {ends}")
        finally:
            c.close()
    return "; ".join(lines)


def verify(stack: Stack, sent: dict[Path, Sent], succeeded: set[Path], server: str = "server-1") -> None:
    """Every acknowledged instance searchable, retrievable byte for byte and in its
    series' metadata; counts exact; nothing that was not sent; no duplicates."""
    url = stack.url(server)
    try:
        wait_until(lambda: _searchable(url, sent, succeeded), 60, "acknowledged instances searchable")
    except BaseException:
        print("DIAGNOSIS:", diagnose(stack))
        print(stack.outputs(6000))
        raise
    sops_sent = {s.sop: s for s in sent.values()}
    studies = sorted({s.study for s in sent.values()})
    with httpx.Client(timeout=60) as http:
        for study in studies:
            listed = [str(i["00080018"]["Value"][0]) for i in qido_instances(url, study)]  # type: ignore[index]
            assert len(listed) == len(set(listed)), f"duplicates in QIDO of study {study}"
            assert set(listed) <= set(sops_sent), "an instance nobody sent"
            r = http.get(f"{url}/studies", params={"StudyInstanceUID": study, "includefield": "all"})
            assert r.status_code == 200, r.text
            (found,) = r.json()
            assert found["00201208"]["Value"][0] == len(listed), "NumberOfStudyRelatedInstances"
            per_series: dict[str, set[str]] = defaultdict(set)
            for sop in listed:
                per_series[sops_sent[sop].series].add(sop)
            r = http.get(f"{url}/studies/{study}/series")
            assert r.status_code == 200
            for row in r.json():
                series = row["0020000E"]["Value"][0]
                assert row["00201209"]["Value"][0] == len(per_series[series]), "NumberOfSeriesRelatedInstances"

            def metadata_complete(study: str = study, per_series: dict[str, set[str]] = per_series) -> object:
                for series, sops in per_series.items():
                    m = http.get(f"{url}/studies/{study}/series/{series}/metadata")
                    if m.status_code != 200:
                        return f"metadata {m.status_code}"
                    got = [o["00080018"]["Value"][0] for o in m.json()]
                    if sorted(got) != sorted(sops):
                        return f"series metadata lists {len(got)} of {len(sops)}"
                return True

            wait_until(metadata_complete, 30, f"metadata of study {study} complete")
        for path in sorted(succeeded):
            s = sent[path]
            r = http.get(
                f"{url}/studies/{s.study}/series/{s.series}/instances/{s.sop}",
                headers={"Accept": "application/dicom; transfer-syntax=*"},
            )
            assert r.status_code == 200, f"{s.sop}: {r.status_code} {r.text[:200]}"
            assert dataset_bytes(r.content) == dataset_bytes(path.read_bytes()), f"{s.sop} differs"


# --- the pipeline as separate processes ----------------------------------------------


def test_services_as_separate_processes(stack: Stack, tmp_path: Path) -> None:
    # The webworker's index scan only at its start: metadata can then come from events alone.
    stack.extra_env["DICOMCLOUD_WEBWORKER_INTERVAL"] = "600"
    for name in (*ALL, "storescp-2"):  # two storescp share the DIMSE port (SO_REUSEPORT)
        stack.start(name)
    sent = _files(tmp_path / "in", studies=3, series=2, instances=10)
    sender = Sender(stack.dimse_port, sorted(sent), workers=3, chunk=20)
    t0 = time.monotonic()
    sender.start()
    sender.wait(180)
    assert sender.succeeded == set(sent), sender.refused
    took = wait_until(lambda: _searchable(stack.url("server-2"), sent, set(sent)), 30, "searchable on server-2")
    print(f"last Success → all searchable: {took:.2f} s; ingest {len(sent) / (time.monotonic() - t0):.0f}/s")

    # The webworker wrote every series' metadata by itself, from the events (nobody asked
    # for /metadata yet, and its index scan, the safety net, is off in this test).
    def metadata_files_written() -> object:
        for series, sops in _by_series(sent).items():
            study = next(s.study for s in sent.values() if s.series == series)
            path = stack.data_dir / "files" / "default" / "metadata" / study / f"{series}.json"
            if not path.exists():
                return f"{path.name} not written"
            listed = {o["00080018"]["Value"][0] for o in json.loads(path.read_bytes())}
            if listed != sops:
                return f"{path.name} lists {len(listed)} of {len(sops)}"
        return True

    took = wait_until(metadata_files_written, 10, "metadata files written by the webworker")
    print(f"… and every series' metadata file written {took:.2f} s later")
    verify(stack, sent, set(sent), server="server-1")
    verify(stack, sent, set(sent), server="server-2")

    # STOW-RS through one server, read through the other (dicomweb-client).
    from dicomweb_client.api import DICOMwebClient

    extra = [p for p, _ in write_series(tmp_path / "stow", 3, PatientID="STOW0001", rows=64, columns=64)]
    datasets = [dcmread(p) for p in extra]
    DICOMwebClient(url=stack.url("server-2")).store_instances(datasets)
    study = str(datasets[0].StudyInstanceUID)
    reader = DICOMwebClient(url=stack.url("server-1"))
    wait_until(lambda: len(reader.search_for_instances(study)) == 3, 30, "STOW'ed instances on server-1")
    got = reader.retrieve_instance(study, str(datasets[0].SeriesInstanceUID), str(datasets[0].SOPInstanceUID))
    assert dataset_bytes(part10_bytes(got)) == dataset_bytes(extra[0].read_bytes())

    # Two consumers in one group share the partitions.
    from confluent_kafka.admin import AdminClient

    prefix = stack.bus_url.split("prefix=")[1].split("&")[0]
    admin = AdminClient({"bootstrap.servers": os.environ["DICOMCLOUD_TEST_KAFKA"]})
    group = admin.describe_consumer_groups([prefix + "consumer"])[prefix + "consumer"].result(10)
    assigned = {m.client_id + str(i): len(m.assignment.topic_partitions) for i, m in enumerate(group.members)}
    assert len(group.members) == 2 and all(assigned.values()), assigned

    # One of the two storescp stops: the port is still served by the other.
    assert stack.stop("storescp") == 0
    more = _files(tmp_path / "more", studies=1, series=1, instances=5)  # sent again: stored again
    sender = Sender(stack.dimse_port, sorted(more), workers=2, chunk=5)
    sender.start()
    sender.wait(60)
    assert sender.succeeded == set(more), sender.refused

    codes = stack.stop_all()
    assert all(code == 0 for code in codes.values()), f"{codes}\n{stack.outputs()}"


# --- crashes ----------------------------------------------------------------------------


def test_no_acknowledged_instance_is_lost_when_services_are_killed(stack: Stack, tmp_path: Path) -> None:
    """SIGKILL each service in turn at a random moment of the ingest, then restart it."""
    for name in ALL:
        stack.start(name)
    sent = _files(tmp_path / "in", studies=4, series=3, instances=25)  # 300 instances
    sender = Sender(stack.dimse_port, sorted(sent), workers=4, chunk=15)
    rng = random.Random(os.environ.get("DICOMCLOUD_CRASH_SEED", uuid.uuid4().hex))
    sender.start()
    killed = []
    for name in ("storescp", "consumer-1", "loader", "webworker", "server-1", "consumer-2", "storescp"):
        time.sleep(rng.uniform(0.3, 1.5))
        stack.kill(name)
        killed.append((name, len(sender.succeeded)))
        time.sleep(rng.uniform(0.1, 1.0))
        stack.start(name)
    sender.wait(300)
    print(f"killed (service, acknowledged so far): {killed}; refused: {sender.refused}")
    assert sender.succeeded == set(sent), sender.refused
    verify(stack, sent, sender.succeeded)
    codes = stack.stop_all()
    assert all(code == 0 for code in codes.values()), f"{codes}\n{stack.outputs()}"


def test_broker_killed_and_restarted_mid_ingest(tmp_path: Path) -> None:
    _require("DICOMCLOUD_TEST_DATABASE_URL")
    broker = KafkaBroker(tmp_path / "kafka")
    broker.start()
    with fresh_database() as database_url:
        stack = Stack(
            data_dir=tmp_path / "data",
            database_url=database_url,
            bus_url=kafka_url(broker.address, timeout=3),
            log_dir=tmp_path,
        )
        try:
            for name in ("storescp", "consumer-1", "loader", "webworker", "server-1"):
                stack.start(name)
            sent = _files(tmp_path / "in", studies=2, series=2, instances=25)
            sender = Sender(stack.dimse_port, sorted(sent), workers=3, chunk=10)
            sender.start()
            wait_until(lambda: len(sender.succeeded) >= 20, 60, "ingest under way")
            broker.kill()
            before = len(sender.succeeded)
            # While the broker is away: C-STORE is refused (no Success without a durable
            # event), STOW-RS answers 503, and searches that need no broker still answer.
            t0 = time.monotonic()
            wait_until(lambda: sum(sender.refused.values()) > 0, 30, "a C-STORE refused while the broker is down")
            refused_after = time.monotonic() - t0
            assert len(sender.succeeded) - before <= 12 * 3, "Successes while the broker was down"
            body = part10_bytes(dcmread(sorted(sent)[0]))
            stow = httpx.post(
                f"{stack.url()}/studies",
                content=b"--B\r\nContent-Type: application/dicom\r\n\r\n" + body + b"\r\n--B--\r\n",
                headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=B'},
                timeout=30,
            )
            assert stow.status_code == 503, stow.text
            assert httpx.get(f"{stack.url()}/studies", timeout=10).status_code in (200, 204)
            broker.start()
            sender.wait(240)
            print(f"first refusal {refused_after:.1f} s after the broker died; refused: {sender.refused}")
            assert sender.succeeded == set(sent)
            verify(stack, sent, sender.succeeded)
            codes = stack.stop_all()
            assert all(code == 0 for code in codes.values()), f"{codes}\n{stack.outputs()}"
        finally:
            stack.stop_all()
            broker.kill()


def test_database_down_and_back(tmp_path: Path) -> None:
    _require("DICOMCLOUD_TEST_KAFKA")
    pg_dir = Path(tempfile.mkdtemp(prefix="dicomcloud-e2e-pg-"))
    pg_dir.chmod(0o755)  # reachable by the postgres user
    pg = PostgresCluster(pg_dir / "pg")
    pg.init()
    pg.start()
    stack = Stack(
        data_dir=tmp_path / "data",
        database_url=pg.url,
        bus_url=kafka_url(os.environ["DICOMCLOUD_TEST_KAFKA"]),
        log_dir=tmp_path,
    )
    try:
        for name in ("storescp", "consumer-1", "loader", "webworker", "server-1"):
            stack.start(name)
        sent = _files(tmp_path / "in", studies=2, series=1, instances=10)
        first, second = sorted(sent)[:10], sorted(sent)[10:]
        sender = Sender(stack.dimse_port, first, workers=1, chunk=10)
        sender.start()
        sender.wait(60)
        wait_until(lambda: _searchable(stack.url(), sent, set(first)), 30, "first study searchable")
        pg.stop()
        # storescp needs no database: ingest goes on, and nothing is lost.
        sender = Sender(stack.dimse_port, second, workers=1, chunk=10)
        sender.start()
        sender.wait(60)
        assert sender.succeeded == set(second), sender.refused
        r = httpx.get(f"{stack.url()}/studies", timeout=30)
        assert r.status_code == 503 and "PostgreSQL" in r.text, (r.status_code, r.text)
        pg.start()
        verify(stack, sent, set(sent))  # recovered by itself
        codes = stack.stop_all()
        assert all(code == 0 for code in codes.values()), f"{codes}\n{stack.outputs()}"
    finally:
        stack.stop_all()
        pg.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
