"""Restarting ``dicomcloud up`` on the same data dir keeps everything (ARCHITECTURE §6.1)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests import factory
from tests.e2e.conftest import DICOM, Archive, get_parts, qido, value, wait_for_instances

pytestmark = pytest.mark.e2e


def _store(archive: Archive, datasets: list[Dataset]) -> None:
    ae = AE(ae_title="RESTARTSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    assert assoc.is_established
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status and status.Status == 0x0000, status
    finally:
        assoc.release()


def _check(archive: Archive, datasets: list[Dataset]) -> None:
    study = datasets[0].StudyInstanceUID
    with archive.http() as http:
        wait_for_instances(http, archive.url, [ds.SOPInstanceUID for ds in datasets])
        rows = qido(http, f"{archive.url}/studies", StudyInstanceUID=study)
        assert value(rows[0], "00201208") == len(datasets)
        parts = get_parts(http, f"{archive.url}/studies/{study}", DICOM + "; transfer-syntax=*")
        sent = {ds.SOPInstanceUID: factory.dataset_bytes(factory.part10_bytes(ds)) for ds in datasets}
        got = {factory.read(p.content).SOPInstanceUID: factory.dataset_bytes(p.content) for p in parts}
        assert got == sent
    metadata = archive.client().retrieve_study_metadata(study)
    assert sorted(value(o, "00080018") for o in metadata) == sorted(sent)


def test_restart_keeps_everything(start_archive: Callable[..., Archive]) -> None:
    archive = start_archive()
    first = factory.make_series(4, PatientID="RESTART-1", rows=32, columns=32)
    _store(archive, first)
    _check(archive, first)

    archive.restart()  # SIGTERM, exit 0, start again on the same data dir and database
    _check(archive, first)

    second = factory.make_series(3, PatientID="RESTART-1", SeriesNumber=2, rows=32, columns=32)
    _store(archive, second)
    _check(archive, first + second)
    archive.restart()
    _check(archive, first + second)
