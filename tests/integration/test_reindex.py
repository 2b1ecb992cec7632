"""``dicomcloud reindex``: index, warehouse and metadata rebuilt from the files alone.

Instances go through the real pipeline (ingest → consumer → loader →
webworker) on one database; then the database is replaced by an empty one
and the metadata folder deleted, as after a disaster, and the reindex must
bring back the same QIDO answers, instance lists and metadata files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from dicomcloud.bootstrap import Archive, open_archive
from dicomcloud.domain.attributes import Level
from dicomcloud.domain.layout import (
    METADATA_DIR,
    InstanceKey,
    SeriesKey,
    StudyKey,
    instance_path,
    series_metadata_path,
    study_metadata_path,
)
from dicomcloud.domain.messages import Source
from dicomcloud.domain.qido import parse_qido
from dicomcloud.entrypoints.cli import main
from dicomcloud.errors import InvalidTenant, NotFound
from dicomcloud.settings import Settings
from dicomcloud.usecases.reindex import Progress, Reindex, ReindexReport
from tests.factory import make_instance, make_series, part10_bytes
from tests.integration.test_pipeline import drain

pytestmark = pytest.mark.integration
SOURCE = Source("dimse", "SCU", "DICOMCLOUD", "127.0.0.1")


def _query(level: Level, tenant: str) -> Any:
    return parse_qido(level, tenant, [("includefield", "all")], default_limit=10_000, max_limit=10_000)


def _uid_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(row: dict[str, Any]) -> tuple[str, ...]:
        return tuple(str(row.get(t, {}).get("Value", [""])[0]) for t in ("0020000D", "0020000E", "00080018"))

    return sorted(rows, key=key)


async def snapshot(archive: Archive, tenant: str = "default") -> dict[str, Any]:
    """What clients see: QIDO at every level, instance lists, and the metadata files as stored."""
    studies = _uid_order((await archive.index.search_studies(_query(Level.STUDY, tenant))).matches)
    series = _uid_order((await archive.index.search_series(_query(Level.SERIES, tenant))).matches)
    instances = _uid_order((await archive.warehouse.search_instances(_query(Level.INSTANCE, tenant))).matches)
    members: dict[str, list[InstanceKey]] = {}
    metadata: dict[str, Any] = {}
    for row in studies:
        study = StudyKey(tenant, row["0020000D"]["Value"][0])
        members[study.study_instance_uid] = sorted(
            await archive.index.instances(study), key=lambda k: (k.series_instance_uid, k.sop_instance_uid)
        )
        metadata[study_metadata_path(study)] = orjson.loads(archive.blobs.read(study_metadata_path(study)))
        for state in await archive.index.series_of_study(study):
            path = series_metadata_path(state.key)
            metadata[path] = orjson.loads(archive.blobs.read(path))
    return {"studies": studies, "series": series, "instances": instances, "members": members, "metadata": metadata}


async def _build_everything(archive: Archive) -> None:
    await drain(archive)
    while await archive.metadata.run_once():
        pass


def _datasets() -> list[Any]:
    one = make_series(4, PatientID="RI-1", rows=16, columns=16)
    two = make_series(3, PatientID="RI-1", SeriesNumber=2, Modality="MR", rows=16, columns=16)
    # A header longer than the 64 KiB the reindex reads first (private bulk in group 0011).
    three = make_series(2, PatientID="RI-2", AccessionNumber="ACC-RI-2", rows=16, columns=16, bulk_bytes=100_000)
    return one + two + three


async def _reindex(archive: Archive, tenant: str | None = None) -> tuple[ReindexReport, list[Progress]]:
    seen: list[Progress] = []
    report = await Reindex(archive.blobs, archive.index, archive.warehouse, archive.metadata, batch_size=4).run(
        tenant, seen.append
    )
    return report, seen


async def test_reindex_rebuilds_what_a_lost_database_held(
    tmp_path: Path, database_url: str, new_database: Callable[[], str]
) -> None:
    datasets = _datasets()
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=database_url))
    try:
        for ds in datasets:
            await archive.ingest.store(part10_bytes(ds), "default", SOURCE)
        await _build_everything(archive)
        before = await snapshot(archive)
    finally:
        await archive.close()
    assert len(before["instances"]) == len(datasets) and len(before["studies"]) == 2

    # The disaster: an empty database, no metadata files, only the instance files.
    shutil.rmtree(tmp_path / "files" / "default" / METADATA_DIR)
    replacement = new_database()
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=replacement))
    try:
        report, progress = await _reindex(archive)
        assert (report.files_seen, report.indexed, report.skipped) == (len(datasets), len(datasets), [])
        assert (report.studies, report.series, report.ok) == (2, 3, True)
        assert progress[-1] == Progress("metadata", 2, 2, 0)
        assert Progress("index", len(datasets), len(datasets), 0) in progress
        for ds in datasets:  # metadata is current: nothing left for the webworker
            state = await archive.index.series_state(SeriesKey("default", ds.StudyInstanceUID, ds.SeriesInstanceUID))
            assert state is not None and state.revision == state.metadata_revision
        after = await snapshot(archive)
        assert after == before

        # Idempotent: a second run finds everything in place and changes nothing.
        revisions = {s["0020000E"]["Value"][0]: None for s in after["series"]}
        for ds in datasets:
            key = SeriesKey("default", ds.StudyInstanceUID, ds.SeriesInstanceUID)
            state = await archive.index.series_state(key)
            assert state is not None
            revisions[key.series_instance_uid] = state.revision
        files = sorted((tmp_path / "files" / "default" / METADATA_DIR).rglob("*"))
        mtimes = {p: p.stat().st_mtime_ns for p in files}
        again, _ = await _reindex(archive)
        assert (again.files_seen, again.indexed, again.skipped) == (len(datasets), len(datasets), [])
        assert await snapshot(archive) == before
        for series_uid, revision in revisions.items():
            ds = next(d for d in datasets if d.SeriesInstanceUID == series_uid)
            state = await archive.index.series_state(SeriesKey("default", ds.StudyInstanceUID, series_uid))
            assert state is not None and state.revision == revision
        assert {p: p.stat().st_mtime_ns for p in files} == mtimes
        conn = await asyncpg.connect(replacement)
        try:
            assert await conn.fetchval("SELECT count(*) FROM warehouse.dicom_image_meta") == len(datasets)
        finally:
            await conn.close()
    finally:
        await archive.close()


async def test_reindex_over_an_intact_index_changes_nothing(tmp_path: Path, database_url: str) -> None:
    """Migrating or re-running over a live database: the instances' own received times win."""
    datasets = make_series(3, PatientID="RI-3", rows=16, columns=16)
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=database_url))
    try:
        for ds in datasets:
            await archive.ingest.store(part10_bytes(ds), "default", SOURCE)
        await _build_everything(archive)
        before = await snapshot(archive)
        key = SeriesKey("default", datasets[0].StudyInstanceUID, datasets[0].SeriesInstanceUID)
        state = await archive.index.series_state(key)
        report, _ = await _reindex(archive)
        assert (report.indexed, report.ok) == (3, True)
        assert await archive.index.series_state(key) == state
        assert await snapshot(archive) == before
    finally:
        await archive.close()


async def test_bad_files_are_skipped_with_their_reason(tmp_path: Path, database_url: str) -> None:
    good = make_series(3, PatientID="RI-4", rows=16, columns=16)
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=database_url))
    root = archive.blobs.root
    try:
        for ds in good:
            archive.blobs.write_atomic(
                instance_path(InstanceKey("default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)),
                part10_bytes(ds),
            )
        series_dir = root / "default" / good[0].StudyInstanceUID / good[0].SeriesInstanceUID
        garbage = f"default/{good[0].StudyInstanceUID}/{good[0].SeriesInstanceUID}/1.2.3.999.dcm"
        (root / garbage).write_bytes(b"this is not DICOM at all" * 10)
        stray = make_instance(PatientID="RI-4", InstanceNumber=9, rows=16, columns=16)
        wrong = f"default/{stray.StudyInstanceUID}/9.9.9/{stray.SOPInstanceUID}.dcm"  # another series' folder
        (root / wrong).parent.mkdir(parents=True)
        (root / wrong).write_bytes(part10_bytes(stray))
        (root / "default" / "notes.txt").write_text("hello")
        (root / "default" / "x" / "y").mkdir(parents=True)
        (root / "default" / "x" / "y" / "z.dcm").write_bytes(part10_bytes(stray))
        (series_dir / ".tmp-0123456789abcdef").write_bytes(b"half a file")  # an unfinished write
        (root / "default" / METADATA_DIR / "1.2").mkdir(parents=True)
        (root / "default" / METADATA_DIR / "1.2" / "3.4.json").write_text("[]")

        report, _ = await _reindex(archive)
        skipped = {s.path: s.reason for s in report.skipped}
        assert (report.files_seen, report.indexed, report.temporary_files, report.ok) == (7, 3, 1, False)
        # The metadata builder lists the .dcm files of a series folder: the garbage one
        # there may stop that study's file (reported), never the run.
        study_file = study_metadata_path(StudyKey("default", good[0].StudyInstanceUID))
        assert {f.path for f in report.metadata_failed} <= {study_file}
        assert set(skipped) == {garbage, wrong, "default/notes.txt", "default/x/y/z.dcm"}
        assert "not a DICOM Part 10 file" in skipped[garbage]
        assert "SeriesInstanceUID" in skipped[wrong] and "9.9.9" in skipped[wrong]
        assert "not an instance file" in skipped["default/notes.txt"]
        assert "not a storage path" in skipped["default/x/y/z.dcm"]
        state = await archive.index.series_state(SeriesKey("default", good[0].StudyInstanceUID, "9.9.9"))
        assert state is None
        state = await archive.index.series_state(SeriesKey("default", stray.StudyInstanceUID, stray.SeriesInstanceUID))
        assert state is not None and state.number_of_series_related_instances == 3  # the stray is not counted
    finally:
        await archive.close()


async def test_one_tenant(tmp_path: Path, database_url: str) -> None:
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=database_url))
    try:
        mine, theirs = (
            make_instance(PatientID="RI-5", rows=16, columns=16),
            make_instance(PatientID="RI-6", rows=16, columns=16),
        )
        for tenant, ds in (("hospa", mine), ("hospb", theirs)):
            key = InstanceKey(tenant, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            archive.blobs.write_atomic(instance_path(key), part10_bytes(ds))
        report, _ = await _reindex(archive, "hospb")
        assert (report.files_seen, report.indexed) == (1, 1)
        assert await archive.index.study_state(StudyKey("hospb", theirs.StudyInstanceUID)) is not None
        assert await archive.index.study_state(StudyKey("hospa", mine.StudyInstanceUID)) is None
        with pytest.raises(NotFound):
            await _reindex(archive, "hospc")
        with pytest.raises(InvalidTenant):
            await _reindex(archive, "../etc")
    finally:
        await archive.close()


def _cli(*argv: str) -> int:
    with ThreadPoolExecutor(1) as pool:  # main() runs its own event loop
        return pool.submit(main, list(argv)).result()


def test_cli_summary_and_exit_codes(tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ds = make_instance(PatientID="RI-7", rows=16, columns=16)
    path = (
        tmp_path
        / "files"
        / instance_path(InstanceKey("default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
    )
    path.parent.mkdir(parents=True)
    path.write_bytes(part10_bytes(ds))
    args = ("reindex", "--data-dir", str(tmp_path), "--database-url", database_url, "--log-level", "WARNING")
    assert _cli(*args) == 0
    out, err = capsys.readouterr()
    assert "1 files seen, 1 indexed, 0 skipped" in out
    assert "index" in err and "1/1 files" in err  # not a terminal: plain progress lines

    (path.parent / "1.2.3.dcm").write_bytes(b"garbage")
    assert _cli(*args) == 1
    out, _ = capsys.readouterr()
    assert "2 files seen, 1 indexed, 1 skipped" in out
    assert f"skipped default/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/1.2.3.dcm: not a DICOM Part 10 file" in out

    assert _cli(*args, "--tenant", "nobody") == 1
    assert "no folder of tenant nobody" in capsys.readouterr().err
    assert os.path.isdir(tmp_path / "bus")
