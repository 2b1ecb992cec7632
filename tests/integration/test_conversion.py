"""The conversion queue through the real pipeline (issue 4): ingest → consumer →
converter → loader on real PostgreSQL, the durable journal and the real codecs.

No encoder here writes JPEG 2000 Part 2, so its instances carry an openjpeg
Part 1 codestream under the Part 2 UID (``tests/renditions.py``); deflated
files come from pydicom; retired JPEG processes from DCMTK's ``dcmcjpeg``,
which writes only .53/.55, both decodable by default, so that test names a
viewer list without them.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from dicomcloud.bootstrap import Archive, open_archive
from dicomcloud.domain import viewer_syntaxes as vs
from dicomcloud.domain.layout import InstanceKey, instance_path, rendition_path
from dicomcloud.domain.messages import (
    CONVERSION_QUEUE,
    CONVERSION_RESULT_QUEUE,
    DICOM_IMAGE_QUEUE,
    DICOM_STATE_QUEUE,
    LOG_QUEUE,
    STORAGE_QUEUE,
    ConversionResult,
    Source,
)
from dicomcloud.ports import Record
from dicomcloud.settings import Settings
from dicomcloud.usecases.convert import rendition_for
from dicomcloud.usecases.reindex import Reindex
from tests.conftest import fetch_rows
from tests.factory import make_instance, part10_bytes, read
from tests.renditions import corrupt, dcmtk_jpeg, deflated, j2k_part2, j2k_part2_lossy, video

pytestmark = pytest.mark.integration
SOURCE = Source("dimse", "SCU", "DICOMCLOUD", "127.0.0.1")


async def drain(archive: Archive) -> dict[str, list[Record]]:
    """Run consumer, converter and loader until no topic has anything left (the converter
    publishes retries to its own queue); what each group handled."""
    groups = (
        ("consumer", [STORAGE_QUEUE], archive.index_instances.handle),
        ("converter", [CONVERSION_QUEUE], archive.convert.handle),
        ("loader", [DICOM_IMAGE_QUEUE, DICOM_STATE_QUEUE, LOG_QUEUE, CONVERSION_RESULT_QUEUE],
         archive.load_warehouse.handle),
    )  # fmt: skip
    consumers = {group: archive.bus.consumer(group, topics) for group, topics, _ in groups}
    seen: dict[str, list[Record]] = defaultdict(list)
    try:
        progressed = True
        while progressed:
            progressed = False
            for group, _, handler in groups:
                while records := await consumers[group].poll(1000, 0):
                    assert await handler(records) == []
                    await consumers[group].commit(records)
                    seen[group].extend(records)
                    progressed = True
    finally:
        for consumer in consumers.values():
            await consumer.close()
    return seen


async def conversion_rows(database_url: str) -> dict[str, dict[str, Any]]:
    rows = await fetch_rows(database_url, "SELECT * FROM warehouse.conversion ORDER BY sop_instance_uid")
    return {r["sop_instance_uid"]: r for r in rows}


def key_of(ds: Dataset) -> InstanceKey:
    return InstanceKey("default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


async def test_renditions_through_the_pipeline(tmp_path: Path, database_url: str) -> None:
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=database_url))
    series = {"PatientID": "CONV-1", "rows": 64, "columns": 64}
    part2, part2_pixels = j2k_part2(InstanceNumber=1, **series)
    lossy, lossy_pixels = j2k_part2_lossy(InstanceNumber=2, **series)
    inflate, inflate_pixels = deflated(InstanceNumber=3, **series)
    broken = corrupt(j2k_part2(InstanceNumber=4, **series)[0])
    movie = video(InstanceNumber=5, **series)
    plain = make_instance(InstanceNumber=6, **series)
    later, later_pixels = j2k_part2(InstanceNumber=7, **series)  # after the corrupt one
    converted = {
        part2.SOPInstanceUID: (part2, part2_pixels, JPEGLSLossless),
        lossy.SOPInstanceUID: (lossy, lossy_pixels, JPEGLSLossless),
        inflate.SOPInstanceUID: (inflate, inflate_pixels, ExplicitVRLittleEndian),
        later.SOPInstanceUID: (later, later_pixels, JPEGLSLossless),
    }
    everything = [part2, lossy, inflate, broken, movie, plain, later]
    try:
        for ds in everything:
            await archive.ingest.store(part10_bytes(ds), "default", SOURCE)
        originals = {ds.SOPInstanceUID: archive.blobs.read(instance_path(key_of(ds))) for ds in everything}
        seen = await drain(archive)

        # Only what the viewer cannot decode was routed; the corrupt one went round three times.
        assert len(seen["converter"]) == 6 + 2
        rows = await conversion_rows(database_url)
        assert set(rows) == {ds.SOPInstanceUID for ds in (part2, lossy, inflate, broken, movie, later)}
        for sop, (ds, pixels, target) in converted.items():
            row = rows[sop]
            assert row["status"] == "success", row
            assert row["source_transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID
            assert row["target_transfer_syntax_uid"] == target
            assert row["attempts"] == 1 and row["last_error"] == "" and row["duration_ms"] > 0
            path = rendition_path(key_of(ds), target)
            assert row["rendition_path"] == path
            assert rendition_for(archive.blobs, key_of(ds)) == (path, target)
            rendition = read(archive.blobs.read(path))
            assert rendition.file_meta.TransferSyntaxUID == target
            assert rendition.SOPInstanceUID == sop
            assert np.array_equal(rendition.pixel_array, pixels)  # lossless: exactly pydicom's decode
        assert read(archive.blobs.read(rows[lossy.SOPInstanceUID]["rendition_path"])).LossyImageCompression == "01"
        failed = rows[broken.SOPInstanceUID]
        assert (failed["status"], failed["attempts"]) == ("failed", 3)
        assert "Error decoding the J2K data" in failed["last_error"]
        assert failed["source_transfer_syntax_uid"] == vs.JPEG_2000_MC_LOSSLESS
        assert rendition_for(archive.blobs, key_of(broken)) is None
        unsupported = rows[movie.SOPInstanceUID]
        assert unsupported["status"] == "unsupported" and "video" in unsupported["last_error"]
        assert unsupported["attempts"] == 1
        assert rendition_for(archive.blobs, key_of(plain)) is None
        # The originals were only read.
        for ds in everything:
            assert archive.blobs.read(instance_path(key_of(ds))) == originals[ds.SOPInstanceUID]
        files = sorted(os.listdir(archive.blobs.absolute(instance_path(key_of(part2))).parent))
        assert len(files) == len(everything) + len(converted)

        # Redelivery of the consumer's batch, and of the converter's first batch: the
        # renditions are reused (not written again), no row is added, success rows unchanged.
        stats = {sop: os.stat(archive.blobs.absolute(rows[sop]["rendition_path"])) for sop in converted}
        assert await archive.index_instances.handle(seen["consumer"]) == []
        assert await archive.convert.handle(seen["converter"][:5]) == []
        await drain(archive)
        again = await conversion_rows(database_url)
        assert set(again) == set(rows)
        for sop in converted:
            assert again[sop] == rows[sop]
            st = os.stat(archive.blobs.absolute(rows[sop]["rendition_path"]))
            assert (st.st_ino, st.st_mtime_ns) == (stats[sop].st_ino, stats[sop].st_mtime_ns)
        assert (again[broken.SOPInstanceUID]["status"], again[broken.SOPInstanceUID]["attempts"]) == ("failed", 3)

        # Neither the metadata builder nor the index nor reindex take a rendition for an instance.
        key = key_of(part2)
        objects = orjson.loads(archive.blobs.read(await archive.metadata.ensure_series(key.series)))
        assert sorted(o["00080018"]["Value"][0] for o in objects) == sorted(ds.SOPInstanceUID for ds in everything)
        state = await archive.index.series_state(key.series)
        assert state is not None and state.number_of_series_related_instances == len(everything)
        report = await Reindex(archive.blobs, archive.index, archive.warehouse, archive.metadata).run()
        assert report.ok, report.skipped
        assert (report.files_seen, report.indexed, report.renditions) == (len(everything), len(everything), 4)
        objects = orjson.loads(archive.blobs.read(await archive.metadata.ensure_series(key.series)))
        assert len(objects) == len(everything)
        state = await archive.index.series_state(key.series)
        assert state is not None and state.number_of_series_related_instances == len(everything)
    finally:
        await archive.close()


async def test_retired_jpeg_with_a_viewer_list_without_it(tmp_path: Path, database_url: str) -> None:
    """DCMTK's progressive JPEG (.55), with a viewer list that leaves .53/.55 out."""
    viewer = tuple(s for s in vs.DEFAULT_VIEWER_TRANSFER_SYNTAXES if s not in vs.DECODE_AS)
    archive = await open_archive(
        Settings(data_dir=tmp_path, database_url=database_url, viewer_transfer_syntaxes=viewer)
    )
    try:
        ds, dcmtk_pixels = dcmtk_jpeg(make_instance(PatientID="CONV-2", rows=64, columns=64), "+ep")
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.55"
        await archive.ingest.store(part10_bytes(ds), "default", SOURCE)
        await drain(archive)
        row = (await conversion_rows(database_url))[ds.SOPInstanceUID]
        assert (row["status"], row["target_transfer_syntax_uid"]) == ("success", JPEGLSLossless)
        rendition = read(archive.blobs.read(row["rendition_path"]))
        assert rendition.LossyImageCompression == "01"
        assert np.abs(rendition.pixel_array.astype(np.int32) - dcmtk_pixels.astype(np.int32)).max() <= 1
    finally:
        await archive.close()


async def test_conversion_upsert_rules(tmp_path: Path, database_url: str) -> None:
    """Last finished attempt wins; a redelivered older result or a reused success changes nothing."""
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=database_url))

    def result(status: str, attempt: int, second: int, error: str = "", reused: bool = False) -> ConversionResult:
        return ConversionResult(
            "default", "1.2", "1.2.3", "1.2.3.4", vs.JPEG_2000_MC_LOSSLESS, JPEGLSLossless, status, attempt,
            10.0 * attempt, f"2024-01-01T00:00:{second:02d}+00:00", error, "", 0, reused,
        )  # fmt: skip

    async def row() -> tuple[object, ...]:
        (only,) = (await conversion_rows(database_url)).values()
        return only["status"], only["attempts"], only["last_error"], only["duration_ms"]

    try:
        await archive.warehouse.load_conversions([result("retrying", 1, 1, "bad"), result("failed", 2, 2, "worse")])
        assert await row() == ("failed", 2, "worse", 20.0)
        await archive.warehouse.load_conversions([result("retrying", 1, 1, "bad")])  # redelivered, older
        assert await row() == ("failed", 2, "worse", 20.0)
        await archive.warehouse.load_conversions([result("success", 1, 3)])  # converted again later
        assert await row() == ("success", 1, "worse", 10.0)  # the last error is kept
        await archive.warehouse.load_conversions([result("success", 1, 4, reused=True)])
        assert await row() == ("success", 1, "worse", 10.0)
    finally:
        await archive.close()


async def test_reindex_of_a_migrated_archive_requests_its_conversions(tmp_path: Path, database_url: str) -> None:
    """Files laid out under ROOT by hand (no event ever published): reindex indexes them
    and sends what a viewer cannot decode to the converter."""
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=database_url))
    try:
        part2, pixels = j2k_part2(InstanceNumber=1, PatientID="MIGRATED", rows=64, columns=64)
        plain = make_instance(InstanceNumber=2, PatientID="MIGRATED", rows=64, columns=64)
        for ds in (part2, plain):
            archive.blobs.write_atomic(instance_path(key_of(ds)), part10_bytes(ds))
        report = await Reindex(
            archive.blobs,
            archive.index,
            archive.warehouse,
            archive.metadata,
            bus=archive.bus,
            viewer_transfer_syntaxes=archive.settings.viewer_transfer_syntaxes,
        ).run()
        assert report.ok and report.indexed == 2 and report.conversions_requested == 1
        await drain(archive)
        found = rendition_for(archive.blobs, key_of(part2))
        assert found is not None and found[1] == JPEGLSLossless
        assert np.array_equal(read(archive.blobs.read(found[0])).pixel_array, pixels)
        assert rendition_for(archive.blobs, key_of(plain)) is None
        assert (await conversion_rows(database_url))[part2.SOPInstanceUID]["status"] == "success"
    finally:
        await archive.close()
