"""ReadCache over the in-process cache: generations, scopes, epoch, breaker.

``Switchable`` is the in-process cache with a switch that makes every call
fail as an unreachable Redis would, and an incarnation the test can change
as a Redis restart would; the real Redis runs in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from dicomcloud.adapters.memory_cache import MemoryCache
from dicomcloud.errors import Unavailable
from dicomcloud.usecases.read_cache import EPOCH, ReadCache, study_generation, tenant_generation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Switchable(MemoryCache):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.down = False
        self.calls = 0
        self.restarts = 0
        self.restart_on_read_of = ""  # a key prefix: the server restarts as it is read

    @property
    def incarnation(self) -> str:
        return f"server-{self.restarts}"

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise Unavailable("the cache is down")

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self._check()
        if self.restart_on_read_of and any(k.startswith(self.restart_on_read_of) for k in keys):
            self.restarts += 1
        return await super().get_many(keys)

    async def set(self, key: str, value: bytes, ttl_seconds: int | None) -> None:
        self._check()
        await super().set(key, value, ttl_seconds)

    async def incr_many(self, keys: Sequence[str], ttl_seconds: int | None) -> list[int]:
        self._check()
        return await super().incr_many(keys, ttl_seconds)


class Source:
    """What the answers are computed from; counts the computations."""

    def __init__(self) -> None:
        self.data = {"s1": "one", "s2": "two", "t": "tenant"}
        self.computed = 0

    def compute(self, name: str):  # type: ignore[no-untyped-def]
        async def run() -> bytes:
            self.computed += 1
            return self.data[name].encode()

        return run


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def memory(clock: Clock) -> Switchable:
    return Switchable(clock)


@pytest.fixture
def cache(memory: Switchable, clock: Clock) -> ReadCache:
    return ReadCache(memory, 3600, breaker_seconds=1.0, clock=clock)


async def fetch(cache: ReadCache, source: Source, name: str, study: str | None = "s1", tenant: str = "A") -> bytes:
    return await cache.fetch(tenant, study, "k", [name], source.compute(name))


async def test_second_read_is_a_hit(cache: ReadCache) -> None:
    source = Source()
    assert await fetch(cache, source, "s1") == b"one"
    assert await fetch(cache, source, "s1") == b"one"
    assert source.computed == 1
    assert (cache.stats.misses, cache.stats.hits) == (1, 1)


async def test_parts_and_kinds_name_different_answers(cache: ReadCache) -> None:
    source = Source()
    await fetch(cache, source, "s1")
    await fetch(cache, source, "s2")
    await cache.fetch("A", "s1", "other-kind", ["s1"], source.compute("s1"))
    assert source.computed == 3


async def test_a_write_to_the_study_is_seen_by_the_next_read(cache: ReadCache) -> None:
    source = Source()
    await fetch(cache, source, "s1")
    source.data["s1"] = "one, changed"
    assert await fetch(cache, source, "s1") == b"one"  # not told yet: the cached answer
    await cache.invalidate([("A", "s1")])
    assert await fetch(cache, source, "s1") == b"one, changed"


async def test_invalidation_scopes(cache: ReadCache) -> None:
    source = Source()
    await fetch(cache, source, "s1", study="s1")
    await fetch(cache, source, "s2", study="s2")
    await fetch(cache, source, "t", study=None)  # a tenant-wide answer
    await fetch(cache, source, "t", study=None, tenant="B")
    assert source.computed == 4
    await cache.invalidate([("A", "s2")])
    await fetch(cache, source, "s1", study="s1")  # another study: still cached
    assert source.computed == 4
    await fetch(cache, source, "s2", study="s2")  # this study: computed again
    await fetch(cache, source, "t", study=None)  # the tenant's: computed again
    assert source.computed == 6
    await fetch(cache, source, "t", study=None, tenant="B")  # another tenant: still cached
    assert source.computed == 6


async def test_a_writer_never_waits_for_the_cache_and_pays_lost_increments_with_an_epoch(
    memory: Switchable, clock: Clock
) -> None:
    source = Source()
    reader = ReadCache(memory, 3600, clock=clock)
    writer = ReadCache(memory, 3600, clock=clock, retry_seconds=0.01)
    await fetch(reader, source, "s1", study="s1")
    (epoch,) = await memory.get_many([EPOCH])
    memory.down = True
    source.data["s1"] = "written during the outage"
    await writer.invalidate([("A", "s1")])  # does not raise: indexing goes on
    assert writer.owes_epoch_bump
    await asyncio.sleep(0.05)  # the background retry fails while the cache is down
    assert writer.owes_epoch_bump
    memory.down = False
    for _ in range(100):
        if not writer.owes_epoch_bump:
            break
        await asyncio.sleep(0.01)
    assert not writer.owes_epoch_bump, "the writer paid by itself, with no further write"
    assert await memory.get_many([EPOCH]) != [epoch]
    assert await fetch(reader, source, "s1", study="s1") == b"written during the outage"
    await writer.close()


async def test_an_owed_epoch_is_paid_before_the_next_invalidation(memory: Switchable, clock: Clock) -> None:
    writer = ReadCache(memory, 3600, clock=clock, retry_seconds=3600)  # no background retry in time
    await writer.invalidate([("A", "s0")])
    (epoch,) = await memory.get_many([EPOCH])
    memory.down = True
    await writer.invalidate([("A", "s1")])
    memory.down = False
    await writer.invalidate([("A", "s2")])
    assert not writer.owes_epoch_bump
    assert await memory.get_many([EPOCH]) != [epoch]
    await writer.close()


async def test_reads_go_around_a_failed_cache_and_skip_it_for_a_while(
    cache: ReadCache, memory: Switchable, clock: Clock
) -> None:
    source = Source()
    await fetch(cache, source, "s1")
    memory.down = True
    assert await fetch(cache, source, "s1") == b"one"
    calls = memory.calls
    for _ in range(5):
        assert await fetch(cache, source, "s1") == b"one"
    assert memory.calls == calls  # the breaker is open: the cache is not even asked
    assert cache.stats.bypasses == 6
    clock.now += 1.5
    memory.down = False
    await fetch(cache, source, "s1")
    assert memory.calls > calls


async def test_after_an_outage_earlier_answers_are_not_trusted(
    cache: ReadCache, memory: Switchable, clock: Clock
) -> None:
    source = Source()
    await fetch(cache, source, "s1")
    bumps = cache.stats.epoch_bumps
    memory.down = True
    source.data["s1"] = "written during the outage"
    await cache.invalidate([("A", "s1")])  # the writer's INCR is lost (an epoch bump is owed)
    memory.down = False
    clock.now += 1.5
    assert await fetch(cache, source, "s1") == b"written during the outage"
    assert cache.stats.epoch_bumps == bumps + 1


async def test_a_restarted_server_gets_a_new_epoch(memory: Switchable, clock: Clock) -> None:
    source = Source()
    reader = ReadCache(memory, 3600, clock=clock)
    await fetch(reader, source, "s1")
    (epoch,) = await memory.get_many([EPOCH])
    # The server restarts from a snapshot taken before a write's INCR: the
    # generation went back, the old answer came back. Another process (no error
    # seen) reads next.
    source.data["s1"] = "changed"
    memory.restarts += 1
    other = ReadCache(memory, 3600, clock=clock)
    assert await fetch(other, source, "s1") == b"changed"
    assert other.stats.epoch_bumps == 1
    assert await memory.get_many([EPOCH]) != [epoch]


async def test_an_answer_read_across_a_restart_is_not_used(cache: ReadCache, memory: Switchable) -> None:
    source = Source()
    await fetch(cache, source, "s1")
    source.data["s1"] = "changed"  # and the server restarts from a snapshot holding the old answer
    memory.restart_on_read_of = "dc:A:k:"  # between reading the epoch and reading the answer
    assert await fetch(cache, source, "s1") == b"changed"
    assert source.computed == 2


async def test_a_vanished_generation_does_not_bring_old_answers_back(cache: ReadCache, memory: Switchable) -> None:
    source = Source()
    await fetch(cache, source, "s1")
    source.data["s1"] = "changed"
    await cache.invalidate([("A", "s1")])
    memory.discard(study_generation("A", "s1"))  # evicted
    memory.discard(tenant_generation("A"))
    assert await fetch(cache, source, "s1") == b"changed"


async def test_a_vanished_epoch_is_created_again(cache: ReadCache, memory: Switchable) -> None:
    source = Source()
    await fetch(cache, source, "s1")
    memory.discard(EPOCH)
    source.data["s1"] = "changed"
    assert await fetch(cache, source, "s1") == b"changed"


async def test_no_cache_computes_every_time() -> None:
    cache = ReadCache(None, 3600)
    source = Source()
    await fetch(cache, source, "s1")
    await fetch(cache, source, "s1")
    await cache.invalidate([("A", "s1")])
    assert source.computed == 2
    assert not cache.enabled


async def test_large_answers_are_not_kept(memory: Switchable, clock: Clock) -> None:
    cache = ReadCache(memory, 3600, max_entry_bytes=3, clock=clock)
    source = Source()
    await fetch(cache, source, "s1")  # 3 bytes: kept
    await fetch(cache, source, "s1")
    await fetch(cache, source, "t")  # 6 bytes: not kept
    await fetch(cache, source, "t")
    assert source.computed == 3
