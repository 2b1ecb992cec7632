"""The Cache port in this process: a bounded LRU (``dicomcloud up`` and unit tests).

Values and counters share one ``OrderedDict`` in least-recently-used order and
one byte budget; expired entries are dropped when read or when the budget
needs room. Counters are stored as their decimal digits, as Redis stores them,
so both adapters answer ``get_many`` alike. Only the event loop's thread uses
it: no method awaits while it changes the dictionary.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence

from dicomcloud.errors import Unavailable

OVERHEAD = 64  # bytes counted per entry besides key and value
COUNTER_START_BITS = 61  # a new counter starts in [2**61, 2**62): far from 0, far from overflow


def counter_start() -> int:
    return (1 << COUNTER_START_BITS) + secrets.randbits(COUNTER_START_BITS)


class MemoryCache:
    def __init__(self, max_bytes: int = 128 * 1024 * 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self._items: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key -> (value, expires at)
        self._bytes = 0
        self._max_bytes = max_bytes
        self._clock = clock
        self._incarnation = uuid.uuid4().hex  # this process's memory: lost only with the process

    @property
    def incarnation(self) -> str:
        return self._incarnation

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def discard(self, key: str) -> None:
        """Forget ``key`` as an eviction would (not in the port: Redis evicts by itself)."""
        if key in self._items:
            self._drop(key)

    def _get(self, key: str, now: float) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= now:
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item[0]

    def _drop(self, key: str) -> None:
        value, _ = self._items.pop(key)
        self._bytes -= len(key) + len(value) + OVERHEAD

    def _put(self, key: str, value: bytes, ttl_seconds: int | None, now: float) -> None:
        if key in self._items:
            self._drop(key)
        size = len(key) + len(value) + OVERHEAD
        if size > self._max_bytes:
            return  # never fits: not kept (a cache may always forget)
        while self._bytes + size > self._max_bytes:
            self._drop(next(iter(self._items)))
        self._items[key] = (value, math.inf if ttl_seconds is None else now + ttl_seconds)
        self._bytes += size

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self._clock()
        return [self._get(k, now) for k in keys]

    async def set(self, key: str, value: bytes, ttl_seconds: int | None) -> None:
        self._put(key, bytes(value), ttl_seconds, self._clock())

    async def incr_many(self, keys: Sequence[str], ttl_seconds: int | None) -> list[int]:
        now = self._clock()
        result = []
        for key in keys:
            old = self._get(key, now)
            try:
                value = counter_start() if old is None else int(old) + 1
            except ValueError as exc:
                raise Unavailable(f"cache key {key!r} does not hold a counter") from exc
            self._put(key, str(value).encode(), ttl_seconds, now)
            result.append(value)
        return result

    async def close(self) -> None:
        self._items.clear()
        self._bytes = 0
