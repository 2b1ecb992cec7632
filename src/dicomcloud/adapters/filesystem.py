"""BlobStore on a local (or shared) filesystem under ROOT (ARCHITECTURE §3).

Writes go to a temporary name in the target directory, are fsync'ed, then
renamed over the final name, and the directory is fsync'ed: no reader ever
sees a partial file, and an acknowledged file survives a power cut.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

from dicomcloud.domain.layout import INSTANCE_SUFFIX, SeriesKey, series_dir
from dicomcloud.domain.uids import is_valid_uid

TMP_PREFIX = ".tmp-"


class _DirectorySync:
    """Coalesced directory fsyncs: one fsync serves every rename made before it began.

    Several associations storing into one series folder would otherwise each
    fsync the folder; here a caller waits for an fsync that *started* after
    its rename, and whoever finds none running performs it for all waiting.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._started: dict[Path, int] = {}
        self._done: dict[Path, int] = {}
        self._running: set[Path] = set()

    def sync(self, directory: Path) -> None:
        with self._cond:
            needed = self._started.get(directory, 0) + 1
            while self._done.get(directory, 0) < needed:
                if directory in self._running:
                    self._cond.wait()
                    continue
                self._running.add(directory)
                generation = self._started[directory] = self._started.get(directory, 0) + 1
                self._cond.release()
                try:
                    fd = os.open(directory, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                finally:
                    self._cond.acquire()
                    self._running.discard(directory)
                    self._cond.notify_all()
                self._done[directory] = generation
            if directory not in self._running and len(self._done) > 4096:
                self._started.pop(directory, None)
                self._done.pop(directory, None)


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._dir_sync = _DirectorySync()
        self._known_dirs: set[Path] = set()

    def absolute(self, path: str) -> Path:
        # Paths come from domain.layout (validated components); refuse anything else.
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"not a relative storage path: {path!r}")
        return self.root / path

    def write_atomic(
        self,
        path: str,
        data: bytes | memoryview | Sequence[bytes | memoryview],
        *,
        mtime_ns: int | None = None,
        sync: bool = True,
    ) -> int:
        """Write ``data`` at ``path`` atomically; ``sync`` also makes it durable.

        Derived files (metadata) pass ``sync=False``: they are rebuilt from the
        instances whenever they are stale or missing.
        """
        target = self.absolute(path)
        directory = target.parent
        if directory not in self._known_dirs:
            directory.mkdir(parents=True, exist_ok=True)
            if len(self._known_dirs) > 10_000:
                self._known_dirs.clear()
            self._known_dirs.add(directory)
        tmp = directory / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:  # the folder was removed behind our back
            self._known_dirs.discard(directory)
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        parts = (
            [memoryview(data)] if isinstance(data, bytes | bytearray | memoryview) else [memoryview(p) for p in data]
        )
        total = sum(p.nbytes for p in parts)
        try:
            while parts:  # one writev for all parts; loop on short writes
                written = os.writev(fd, parts)
                while parts and written >= parts[0].nbytes:
                    written -= parts[0].nbytes
                    parts.pop(0)
                if parts and written:
                    parts[0] = parts[0][written:]
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, target)
        if not sync:
            return total
        self._dir_sync.sync(directory)
        return total

    def sync(self, path: str) -> None:
        """Make a file written with ``sync=False`` durable: fsync it and its directory."""
        target = self.absolute(path)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._dir_sync.sync(target.parent)

    def read(self, path: str) -> bytes:
        return self.absolute(path).read_bytes()

    def exists(self, path: str) -> bool:
        return self.absolute(path).is_file()

    def remove(self, path: str) -> None:
        self.absolute(path).unlink(missing_ok=True)

    def series_instance_uids(self, key: SeriesKey) -> list[str]:
        """SOP Instance UIDs of the files present in a series folder (temp files excluded)."""
        try:
            names = os.listdir(self.absolute(series_dir(key)))
        except FileNotFoundError:
            return []
        uids = []
        for name in names:
            if name.endswith(INSTANCE_SUFFIX):
                uid = name[: -len(INSTANCE_SUFFIX)]
                if is_valid_uid(uid):
                    uids.append(uid)
        return uids
