"""The embedded message bus: in-process, durable, ordered (``dicomcloud up``).

A single append-only journal file holds every published record
(``[magic][topic len][key len][value len] topic key value [crc32]``);
``publish`` returns only after the records are written and fsync'ed, with
group commit so that concurrent publishers share one fsync. Consumer groups
keep their committed offsets in ``offsets.json`` (atomic replace), so after a
crash every record not yet committed by a group is delivered again — which
is why consumers are idempotent (ARCHITECTURE §6.2). With ``path=None`` it
is a plain in-memory bus for unit tests.

The journal is compacted when it grows past ``compact_bytes`` and most of
it has been committed by every group that reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from dicomcloud.errors import Unavailable
from dicomcloud.ports import Record

_MAGIC = 0xD1
_HEAD = struct.Struct("<BHHI")
_CRC = struct.Struct("<I")
JOURNAL = "journal.log"
Item = tuple[str, str, bytes]  # topic, key, value
_BASE_TOPIC = "__base__"  # first record after a compaction: key = offset of the next record
OFFSETS = "offsets.json"


def _encode(topic: str, key: str, value: bytes) -> bytes:
    t, k = topic.encode(), key.encode()
    body = _HEAD.pack(_MAGIC, len(t), len(k), len(value)) + t + k + value
    return body + _CRC.pack(zlib.crc32(body))


def _decode_all(data: bytes) -> tuple[list[tuple[str, str, bytes]], int]:
    """Records in ``data`` and the length of the valid prefix (a torn tail is dropped)."""
    out: list[tuple[str, str, bytes]] = []
    pos = 0
    while pos + _HEAD.size <= len(data):
        magic, tl, kl, vl = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + tl + kl + vl
        if magic != _MAGIC or end + _CRC.size > len(data):
            break
        (crc,) = _CRC.unpack_from(data, end)
        if crc != zlib.crc32(data[pos:end]):
            break
        p = pos + _HEAD.size
        out.append(
            (
                data[p : p + tl].decode(),
                data[p + tl : p + tl + kl].decode(),
                data[p + tl + kl : end],
            )
        )
        pos = end + _CRC.size
    return out, pos


class _Topic:
    def __init__(self) -> None:
        self.records: list[Record] = []  # ascending offsets
        self.groups: set[str] = set()


class JournalBus:
    def __init__(self, path: Path | None, *, compact_bytes: int = 256 * 1024 * 1024) -> None:
        self._dir = path
        self._compact_bytes = compact_bytes
        self._topics: dict[str, _Topic] = {}
        self._committed: dict[str, dict[str, int]] = {}  # group -> topic -> next offset
        self._next_offset = 0
        self._cond = threading.Condition()
        self._pending: list[tuple[int, bytes, list[tuple[str, str, bytes]]]] = []
        self._enqueued = 0  # tickets handed out
        self._flushed = 0  # every ticket up to this one has been written (or failed)
        self._flushing = False
        self._failed: set[int] = set()
        self._failure: OSError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):  # built inside the service's loop: bind to it
            self._loop = asyncio.get_running_loop()
        self._new_data = asyncio.Event()
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._journal_bytes = 0
        self._closed = False
        self._offsets_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(32, thread_name_prefix="journal")
        if path is not None:
            self._open(path)

    # -- durability -------------------------------------------------------
    def _open(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # One process owns the journal: a second one would interleave appends and offsets.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise Unavailable(
                f"the embedded bus in {directory} is in use by another dicomcloud process "
                "(services in separate processes need --bus kafka://host:port)"
            ) from None
        offsets = directory / OFFSETS
        if offsets.exists():
            self._committed = {g: dict(t) for g, t in orjson.loads(offsets.read_bytes()).items()}
        journal = directory / JOURNAL
        data = journal.read_bytes() if journal.exists() else b""
        records, valid = _decode_all(data)
        if valid != len(data):  # torn write at a crash: the unacknowledged tail goes
            with open(journal, "r+b") as f:
                f.truncate(valid)
                os.fsync(f.fileno())
        base = 0
        if records and records[0][0] == _BASE_TOPIC:
            base = int(records.pop(0)[1])
        for i, (topic, key, value) in enumerate(records):
            self._append(topic, key, value, base + i)
        self._next_offset = base + len(records)
        for group, topics in self._committed.items():
            for topic in topics:
                self._topic(topic).groups.add(group)
        self._fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._journal_bytes = valid
        for topic in list(self._topics):
            self._trim(topic)

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = _Topic()
        return topic

    def _append(self, topic: str, key: str, value: bytes, offset: int) -> None:
        self._topic(topic).records.append(Record(topic, key, value, 0, offset))

    async def publish(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        self._bind_loop()
        if self._fd is None:
            if self._closed:
                raise Unavailable("the message bus is closed")
            self._publish_now(items)
            return
        # Waiting publishers share one fsync (group commit) in their own threads.
        await asyncio.get_running_loop().run_in_executor(self._executor, self.publish_blocking, items)

    def publish_blocking(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        """Publish from any thread but the event loop's; returns once durable.

        Leader/follower group commit: the first waiting publisher writes and
        fsyncs every pending record at once; the others wait for that flush.
        Records become visible to consumers (on the loop) only once durable,
        in journal order.
        """
        blob = b"".join(_encode(t, k, v) for t, k, v in items)
        with self._cond:
            if self._closed:
                raise Unavailable("the message bus is closed")
            if self._fd is None:
                self._call_on_loop(self._publish_now, list(items))
                return
            self._enqueued += 1
            ticket = self._enqueued
            self._pending.append((ticket, blob, list(items)))
            while self._flushed < ticket:
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flushing = True
                batch, self._pending = self._pending, []
                self._cond.release()
                error: OSError | None = None
                try:
                    self._write(b"".join(b for _, b, _ in batch))
                except OSError as exc:
                    error = exc
                finally:
                    self._cond.acquire()
                    self._flushing = False
                last = batch[-1][0]
                if error is None:
                    visible = [item for _, _, batch_items in batch for item in batch_items]
                    self._call_on_loop(self._publish_now, visible)
                else:
                    self._failed.update(t for t, _, _ in batch)
                    self._failure = error
                self._flushed = last
                self._cond.notify_all()
            if ticket in self._failed:
                self._failed.discard(ticket)
                raise Unavailable(f"journal write failed: {self._failure}")

    def _bind_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()

    def _call_on_loop(self, fn: Callable[[list[Item]], None], items: list[Item]) -> None:
        loop = self._loop
        if loop is None:
            raise Unavailable("the message bus has no consumer loop yet")
        try:
            loop.call_soon_threadsafe(fn, items)
        except RuntimeError as exc:  # the loop is closed: we are shutting down
            raise Unavailable("the message bus is shutting down") from exc

    def _publish_now(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        for topic, key, value in items:
            self._append(topic, key, value, self._next_offset)
            self._next_offset += 1
        self._new_data.set()

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError:
            # Leave no torn or unacknowledged record behind to be replayed later.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._journal_bytes)
            raise
        self._journal_bytes += len(data)

    # -- consumption ------------------------------------------------------
    def consumer(self, group: str, topics: Sequence[str]) -> JournalConsumer:
        with contextlib.suppress(RuntimeError):
            self._bind_loop()
        for name in topics:
            self._topic(name).groups.add(group)
        return JournalConsumer(self, group, tuple(topics))

    def _committed_offset(self, group: str, topic: str) -> int:
        return self._committed.get(group, {}).get(topic, 0)

    def _fetch(self, group: str, topics: tuple[str, ...], positions: dict[str, int], limit: int) -> list[Record]:
        out: list[Record] = []
        for name in topics:
            records = self._topic(name).records
            start = positions.get(name, self._committed_offset(group, name))
            lo, hi = 0, len(records)
            while lo < hi:  # first record with offset >= start
                mid = (lo + hi) // 2
                if records[mid].offset < start:
                    lo = mid + 1
                else:
                    hi = mid
            out.extend(records[lo : lo + (limit - len(out))])
            if len(out) >= limit:
                break
        return out

    async def _wait(self, timeout: float) -> None:
        self._new_data.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._new_data.wait(), timeout)

    async def _commit(self, group: str, records: Sequence[Record]) -> None:
        group_offsets = self._committed.setdefault(group, {})
        for record in records:
            if record.offset + 1 > group_offsets.get(record.topic, 0):
                group_offsets[record.topic] = record.offset + 1
        for topic in {r.topic for r in records}:
            self._trim(topic)
        if self._dir is not None:
            async with self._offsets_lock:
                await asyncio.to_thread(self._save_offsets, orjson.dumps(self._committed))
            if self._journal_bytes > self._compact_bytes:
                await self._compact()

    def _trim(self, name: str) -> None:
        """Forget records every reading group has committed."""
        topic = self._topic(name)
        if not topic.groups:
            return
        low = min(self._committed_offset(g, name) for g in topic.groups)
        records = topic.records
        cut = 0
        while cut < len(records) and records[cut].offset < low:
            cut += 1
        if cut:
            del records[:cut]

    def _save_offsets(self, data: bytes, *, sync: bool = False) -> None:
        """Replace the offsets file atomically.

        No fsync by default: offsets that are older after a power cut only
        mean redelivery, which consumers absorb (they are idempotent).
        """
        assert self._dir is not None
        tmp = self._dir / (OFFSETS + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self._dir / OFFSETS)

    async def _compact(self) -> None:
        """Drop the journal's head that every reading group has committed.

        Runs under the publish lock with no flush in flight, and reads the
        journal file itself, so a record that is durable but not yet visible
        on the loop can never be dropped.
        """
        assert self._dir is not None
        directory = self._dir

        def swap() -> None:
            with self._cond:
                while self._flushing or self._pending:
                    self._cond.wait()
                journal = directory / JOURNAL
                records, _ = _decode_all(journal.read_bytes())
                base = 0
                if records and records[0][0] == _BASE_TOPIC:
                    base = int(records.pop(0)[1])
                groups = {name: set(t.groups) for name, t in list(self._topics.items())}
                committed = {g: dict(t) for g, t in list(self._committed.items())}
                cut = 0
                for i, (topic, _key, _value) in enumerate(records):
                    readers = groups.get(topic) or set()
                    if not readers or any(committed.get(g, {}).get(topic, 0) <= base + i for g in readers):
                        break
                    cut = i + 1
                if cut * 2 < len(records):
                    self._compact_bytes = max(self._compact_bytes, 2 * self._journal_bytes)
                    return  # not worth it yet; try again at twice the size
                # The first record names the offset of the next: the new base
                # and the shorter journal replace the old one in one rename.
                data = _encode(_BASE_TOPIC, str(base + cut), b"") + b"".join(
                    _encode(t, k, v) for t, k, v in records[cut:]
                )
                tmp = directory / (JOURNAL + ".tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, journal)
                dir_fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
                if self._fd is not None:
                    os.close(self._fd)
                self._fd = os.open(journal, os.O_WRONLY | os.O_APPEND)
                self._journal_bytes = len(data)

        await asyncio.to_thread(swap)

    async def close(self) -> None:
        def shut() -> None:
            with self._cond:
                self._closed = True
                while self._flushing:
                    self._cond.wait()
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None

        await asyncio.to_thread(shut)
        self._executor.shutdown(wait=False)
        self._new_data.set()


class JournalConsumer:
    """A consumer-group member of a :class:`JournalBus` (one member per group)."""

    def __init__(self, bus: JournalBus, group: str, topics: tuple[str, ...]) -> None:
        self._bus = bus
        self._group = group
        self._topics = topics
        self._positions: dict[str, int] = {}

    async def poll(self, max_records: int, timeout: float) -> list[Record]:
        records = self._bus._fetch(self._group, self._topics, self._positions, max_records)
        if not records and timeout > 0:
            await self._bus._wait(timeout)
            records = self._bus._fetch(self._group, self._topics, self._positions, max_records)
        for record in records:
            self._positions[record.topic] = record.offset + 1
        return records

    async def commit(self, records: Sequence[Record]) -> None:
        await self._bus._commit(self._group, records)

    async def seek_to_committed(self) -> None:
        """Forget uncommitted positions: the next poll redelivers them (retry later)."""
        self._positions.clear()

    async def close(self) -> None:
        return None
