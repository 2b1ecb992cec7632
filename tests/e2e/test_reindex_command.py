"""``dicomcloud reindex`` as a real command: the database is lost, the files rebuild it.

Needs ``DICOMCLOUD_TEST_DATABASE_URL``: "losing" the database is pointing the
archive at a new empty one on that server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import factory
from tests.e2e.conftest import (
    DICOM_JSON,
    Archive,
    dicomcloud_command,
    fresh_database,
    qido,
    running_archive,
    wait_for_instances,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.environ.get("DICOMCLOUD_TEST_DATABASE_URL"),
        reason="DICOMCLOUD_TEST_DATABASE_URL is not set: no server to make the replacement database on",
    ),
]
PATIENT = "REINDEX-E2E"


def _reindex(archive: Archive, database_url: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        *dicomcloud_command(),
        "reindex",
        "--data-dir",
        str(archive.data_dir),
        "--database-url",
        database_url,
        "--public-url",
        archive.base_url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def _seen(archive: Archive, study: str) -> dict[str, Any]:
    with archive.http() as http:
        metadata = http.get(f"{archive.url}/studies/{study}/metadata", headers={"Accept": DICOM_JSON})
        assert metadata.status_code == 200, metadata.text[:300]
        return {
            "studies": qido(http, f"{archive.url}/studies", PatientID=PATIENT, includefield="all"),
            "series": qido(http, f"{archive.url}/series", PatientID=PATIENT, includefield="all"),
            "instances": qido(http, f"{archive.url}/studies/{study}/instances", includefield="all"),
            "metadata": metadata.json(),
        }


def test_reindex_command_rebuilds_a_lost_database(tmp_path: Path) -> None:
    datasets = factory.make_series(4, PatientID=PATIENT, rows=32, columns=32)
    datasets += factory.make_series(2, PatientID=PATIENT, SeriesNumber=2, rows=32, columns=32)
    study = datasets[0].StudyInstanceUID
    with contextlib.ExitStack() as stack:
        replacement = stack.enter_context(fresh_database())  # dropped after the archive stopped
        archive = stack.enter_context(running_archive(tmp_path / "archive"))
        archive.client().store_instances(datasets)
        with archive.http() as http:
            wait_for_instances(http, archive.url, [ds.SOPInstanceUID for ds in datasets])
        before = _seen(archive, study)
        assert len(before["instances"]) == 6 and len(before["metadata"]) == 6

        # `up` owns the embedded bus: the command refuses, and says why.
        refused = _reindex(archive, replacement)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "only while that is stopped" in refused.stderr

        archive.stop_cleanly()
        shutil.rmtree(archive.data_dir / "files" / "default" / "metadata")
        done = _reindex(archive, replacement)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "6 files seen, 6 indexed, 0 skipped (1 studies, 2 series; metadata up to date)" in done.stdout
        assert "index" in done.stderr  # progress lines (stderr is not a terminal here)
        again = _reindex(archive, replacement)
        assert again.returncode == 0 and "6 files seen, 6 indexed, 0 skipped" in again.stdout

        archive.database_url = replacement
        archive.start()
        assert _seen(archive, study) == before
