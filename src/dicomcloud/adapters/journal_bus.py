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
import os
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from dicomcloud.errors import Unavailable
from dicomcloud.ports import Record

_MAGIC = 0xD1
_HEAD = struct.Struct("<BHHI")
_CRC = struct.Struct("<I")
JOURNAL = "journal.log"
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
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._new_data = asyncio.Event()
        self._fd: int | None = None
        self._journal_bytes = 0
        self._closed = False
        self._offsets_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="journal")
        if path is not None:
            self._open(path)

    # -- durability -------------------------------------------------------
    def _open(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
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
        base = self._committed.get("__journal__", {}).get("base", 0)
        for i, (topic, key, value) in enumerate(records):
            self._append(topic, key, value, base + i)
        self._next_offset = base + len(records)
        for group, topics in self._committed.items():
            for topic in topics:
                if group != "__journal__":
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
        if self._closed:
            raise Unavailable("the message bus is closed")
        if self._fd is None:
            self._publish_now(items)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        blob = b"".join(_encode(t, k, v) for t, k, v in items)
        self._pending.append((blob, future))
        # Records become visible to consumers only after they are durable.
        future.add_done_callback(lambda f: None if f.exception() else self._publish_now(items))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    def _publish_now(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        for topic, key, value in items:
            self._append(topic, key, value, self._next_offset)
            self._next_offset += 1
        self._new_data.set()

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            data = b"".join(blob for blob, _ in batch)
            try:
                # A thread of its own: the fsync must not queue behind other work.
                await asyncio.get_running_loop().run_in_executor(self._executor, self._write, data)
            except OSError as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(Unavailable(f"journal write failed: {exc}"))
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

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
        for name in topics:
            self._topic(name).groups.add(group)
        return JournalConsumer(self, group, tuple(topics))

    def _committed_offset(self, group: str, topic: str) -> int:
        return self._committed.get(group, {}).get(topic, 0)

    def _fetch(
        self, group: str, topics: tuple[str, ...], positions: dict[str, int], limit: int
    ) -> list[Record]:
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
        """Rewrite the journal with only the records some group still needs."""
        assert self._dir is not None and self._fd is not None
        while self._flusher is not None and not self._flusher.done():
            await self._flusher
        live = sorted((r for t in self._topics.values() for r in t.records), key=lambda r: r.offset)
        base = live[0].offset if live else self._next_offset
        # Offsets must stay contiguous from base: keep every record from base on.
        data = b"".join(_encode(r.topic, r.key, r.value) for r in live)
        if len(live) != self._next_offset - base:
            return  # a gap (a topic without readers holds old records): not now
        tmp = self._dir / (JOURNAL + ".tmp")

        def rewrite() -> None:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._committed.setdefault("__journal__", {})["base"] = base
            self._save_offsets(orjson.dumps(self._committed), sync=True)
            os.replace(tmp, self._dir / JOURNAL)  # type: ignore[operator]

        await asyncio.to_thread(rewrite)
        os.close(self._fd)
        self._fd = os.open(self._dir / JOURNAL, os.O_WRONLY | os.O_APPEND)
        self._journal_bytes = len(data)

    async def close(self) -> None:
        self._closed = True
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
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
