"""The webworker's use case: series and study metadata files (ARCHITECTURE §2, §3).

``<tenant>/metadata/<study>/<series>.json`` holds the DICOM JSON of every
instance of the series (PS3.18 Annex F), ordered by InstanceNumber;
``<tenant>/metadata/<study>.json`` is the concatenation for the study. Each
is written atomically with a gzip copy beside it (``.json.gz``).

A series is rebuilt when its index revision is ahead of the revision its
metadata was built from. Rebuilds are incremental: instances already in the
previous file are kept unless their file changed after that build started
(the metadata file's mtime is set to the build's start time).
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from io import BytesIO
from typing import Any

import orjson
from pydicom.filereader import dcmread

from dicomcloud.domain.dicom_json import instance_json
from dicomcloud.domain.layout import (
    InstanceKey,
    SeriesKey,
    StudyKey,
    instance_path,
    series_metadata_path,
    study_metadata_path,
)
from dicomcloud.errors import NotFound
from dicomcloud.ports import BlobStore, Index

SOP_INSTANCE_UID = "00080018"
RECENT_SERIES = 32
INSTANCE_NUMBER = "00200013"


def _sop_uid(obj: dict[str, Any]) -> str:
    return str(obj[SOP_INSTANCE_UID]["Value"][0])


def _order(obj: dict[str, Any]) -> tuple[int, str]:
    number = obj.get(INSTANCE_NUMBER, {}).get("Value", [None])[0]
    try:
        n = int(number) if number is not None else 1 << 62
    except (TypeError, ValueError):
        n = 1 << 62
    return (n, _sop_uid(obj))


class MetadataBuilder:
    def __init__(self, blobs: BlobStore, index: Index, instance_url: Callable[[InstanceKey], str]) -> None:
        self._blobs = blobs
        self._index = index
        self._instance_url = instance_url
        self._locks: dict[object, asyncio.Lock] = {}
        # Recently built series: (build start, SOP Instance UID -> DICOM JSON), so an
        # incremental rebuild does not read back and parse its own previous file.
        self._recent: OrderedDict[SeriesKey, tuple[int, dict[str, dict[str, Any]]]] = OrderedDict()
        self._recent_lock = threading.Lock()

    # -- pure-ish work, run in a thread ------------------------------------
    def read_instance_json(self, key: InstanceKey) -> dict[str, Any]:
        path = self._blobs.absolute(instance_path(key))
        try:
            data = path.read_bytes()  # one read; pydicom then parses from memory
        except FileNotFoundError as exc:
            raise NotFound(f"instance {key.sop_instance_uid} not found") from exc
        ds = dcmread(BytesIO(data), force=True)
        return instance_json(ds, self._instance_url(key))

    def _build_series_file(self, key: SeriesKey) -> int:
        started_ns = time.time_ns()
        meta_path = series_metadata_path(key)
        with self._recent_lock:
            recent = self._recent.get(key)
        if recent is not None:
            built_ns, previous = recent
        else:
            previous, built_ns = {}, 0
            absolute = self._blobs.absolute(meta_path)
            try:
                built_ns = absolute.stat().st_mtime_ns
                previous = {_sop_uid(o): o for o in orjson.loads(absolute.read_bytes())}
            except (FileNotFoundError, orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                previous, built_ns = {}, 0
        objects = []
        for sop_uid in self._blobs.series_instance_uids(key):
            ikey = InstanceKey(key.tenant_id, key.study_instance_uid, key.series_instance_uid, sop_uid)
            cached = previous.get(sop_uid)
            if cached is not None:
                try:
                    fresh = self._blobs.absolute(instance_path(ikey)).stat().st_mtime_ns < built_ns
                except FileNotFoundError:
                    continue
                if fresh:
                    objects.append(cached)
                    continue
            try:
                objects.append(self.read_instance_json(ikey))
            except NotFound:
                continue
        objects.sort(key=_order)
        data = orjson.dumps(objects)
        self._write(meta_path, data, started_ns)
        with self._recent_lock:
            self._recent[key] = (started_ns, {_sop_uid(o): o for o in objects})
            self._recent.move_to_end(key)
            while len(self._recent) > RECENT_SERIES:
                self._recent.popitem(last=False)
        return len(objects)

    def _build_study_file(self, key: StudyKey, series: list[SeriesKey]) -> None:
        started_ns = time.time_ns()
        parts = []
        for skey in series:
            try:
                body = self._blobs.read(series_metadata_path(skey)).strip()
            except FileNotFoundError:
                continue
            if len(body) > 2:
                parts.append(body[1:-1])
        self._write(study_metadata_path(key), b"[" + b",".join(parts) + b"]", started_ns)

    def _write(self, path: str, data: bytes, mtime_ns: int) -> None:
        gz = gzip.compress(data, 1, mtime=0)  # DICOM JSON compresses ~20x even at level 1
        self._blobs.write_atomic(path + ".gz", gz, mtime_ns=mtime_ns, sync=False)
        self._blobs.write_atomic(path, data, mtime_ns=mtime_ns, sync=False)

    # -- orchestration ---------------------------------------------------------
    def _lock(self, key: object) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def ensure_series(self, key: SeriesKey) -> str:
        """Bring the series metadata file up to date if needed; return its path."""
        state = await self._index.series_state(key)
        if state is None:
            raise NotFound(f"series {key.series_instance_uid} not found in study {key.study_instance_uid}")
        path = series_metadata_path(key)
        if state.revision <= state.metadata_revision and self._blobs.exists(path):
            return path
        async with self._lock(key):
            state = await self._index.series_state(key)
            assert state is not None
            if state.revision > state.metadata_revision or not self._blobs.exists(path):
                await asyncio.to_thread(self._build_series_file, key)
                await self._index.mark_series_metadata(key, state.revision)
        return path

    async def ensure_study(self, key: StudyKey) -> str:
        state = await self._index.study_state(key)
        if state is None:
            raise NotFound(f"study {key.study_instance_uid} not found")
        path = study_metadata_path(key)
        series = await self._index.series_of_study(key)
        stale = any(s.revision > s.metadata_revision for s in series)
        if not stale and state.revision <= state.metadata_revision and self._blobs.exists(path):
            return path
        async with self._lock(key):
            state = await self._index.study_state(key)
            assert state is not None
            series = await self._index.series_of_study(key)
            for s in series:
                await self.ensure_series(s.key)
            await asyncio.to_thread(self._build_study_file, key, [s.key for s in series])
            await self._index.mark_study_metadata(key, state.revision)
        return path

    async def run_once(self, limit: int = 100, quiet_seconds: float = 0.0, max_delay_seconds: float = 0.0) -> int:
        """Rebuild what is stale; the webworker's periodic scan. Returns files written.

        Debounced: a series still receiving instances is rebuilt once it has
        been quiet for ``quiet_seconds``, or at the latest ``max_delay_seconds``
        after its last build, so a long series is built incrementally while it
        arrives (a request for it builds it at once in any case).
        """
        done = 0
        for series in await self._index.stale_series(limit, quiet_seconds, max_delay_seconds):
            await self.ensure_series(series.key)
            done += 1
        for study in await self._index.stale_studies(limit, quiet_seconds, max_delay_seconds):
            await self.ensure_study(study.key)
            done += 1
        return done
