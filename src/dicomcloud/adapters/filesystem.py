"""BlobStore on a local (or shared) filesystem under ROOT (ARCHITECTURE §3).

Writes go to a temporary name in the target directory, are fsync'ed, then
renamed over the final name, and the directory is fsync'ed: no reader ever
sees a partial file, and an acknowledged file survives a power cut.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from dicomcloud.domain.layout import INSTANCE_SUFFIX, SeriesKey, series_dir
from dicomcloud.domain.uids import is_valid_uid

TMP_PREFIX = ".tmp-"


class FileBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

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
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{TMP_PREFIX}{uuid.uuid4().hex}"
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
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return total

    def sync(self, path: str) -> None:
        """Make a file written with ``sync=False`` durable: fsync it and its directory."""
        target = self.absolute(path)
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

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
