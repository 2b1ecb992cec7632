"""A bounded, thread-safe LRU of frame indexes (:mod:`~dicomcloud.domain.frame_index`).

Keyed by a file's identity (:class:`FileKey`: path, device, inode, size,
mtime), so a file replaced by rename is indexed anew; when several threads ask
for a new file at once, one builds its index and the others wait for it.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from dicomcloud.domain.frame_index import Entry


@dataclass(frozen=True, slots=True)
class FileKey:
    """A file's identity: a file replaced by rename has another inode and mtime."""

    path: str
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> FileKey:
        return cls(os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FrameIndexCache:
    """A bounded LRU of frame indexes, safe to share between threads.

    Bounded by entry count and by the indexes' size. Concurrent first
    accesses to one file build its index once (the others wait for it). A
    new key for a path already cached drops the old entry (the file was
    replaced). An error raised while building is not cached (an index that
    records frames it cannot locate is). ``builds``/``hits`` count for tests
    and benchmarks.
    """

    def __init__(self, max_entries: int = 4096, max_bytes: int = 64 * 2**20) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.builds = 0
        self.hits = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[FileKey, Entry] = OrderedDict()
        self._paths: dict[str, FileKey] = {}
        self._pending: dict[FileKey, Future[Entry]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def snapshot(self) -> dict[FileKey, Entry]:
        """The cached entries, least recently used first."""
        with self._lock:
            return dict(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._paths.clear()
            self._bytes = 0

    def get_or_build(self, key: FileKey, build: Callable[[], Entry]) -> Entry:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
            pending = self._pending.get(key)
            owner = pending is None
            if pending is None:
                pending = self._pending[key] = Future()
        if not owner:
            return pending.result()
        try:
            entry = build()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._pending[key]
            self.builds += 1
            self._insert(key, entry)
        pending.set_result(entry)
        return entry

    def _insert(self, key: FileKey, entry: Entry) -> None:
        old = self._paths.get(key.path)
        if old is not None and old != key:
            self._drop(old)
        self._entries[key] = entry
        self._paths[key.path] = key
        self._bytes += entry.nbytes
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            self._drop(next(iter(self._entries)))

    def _drop(self, key: FileKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes
        if self._paths.get(key.path) == key:
            del self._paths[key.path]


frame_indexes = FrameIndexCache()
"""The process's cache, used by :func:`dicomcloud.domain.frames.read_frames` by default."""
