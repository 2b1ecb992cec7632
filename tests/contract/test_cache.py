"""The Cache port's contract, on the in-process LRU and on a real Redis.

Redis joins when ``DICOMCLOUD_TEST_REDIS`` names a server (``scripts/test.sh``
starts one); each test keeps its keys under a prefix of its own. The tests
after the contract are one adapter's own: the LRU's bound, and Redis's
failures, restarts and prefixes (on a throwaway ``redis-server``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from dicomcloud.adapters.memory_cache import MemoryCache
from dicomcloud.adapters.redis_cache import RedisCache, split_prefix
from dicomcloud.errors import Unavailable
from tests.redis_server import ThrowawayRedis, free_port, needs_redis, needs_redis_server, test_redis_url, with_prefix

AnyCache = MemoryCache | RedisCache
FAR_FROM_ZERO = 1 << 40


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[AnyCache]:
    c: AnyCache = RedisCache(test_redis_url()) if request.param == "redis" else MemoryCache()
    yield c
    await c.close()


# --- the contract -----------------------------------------------------------------------


async def test_missing_keys_are_none(cache: AnyCache) -> None:
    assert await cache.get_many([]) == []
    assert await cache.get_many(["a", "b"]) == [None, None]


async def test_set_then_get_many_in_order(cache: AnyCache) -> None:
    value = bytes(range(256)) * 4  # any bytes: NUL, newlines, non-UTF-8
    await cache.set("a", value, 60)
    await cache.set("b", b"", 60)
    assert await cache.get_many(["b", "x", "a"]) == [b"", None, value]
    await cache.set("a", b"again", 60)
    assert await cache.get_many(["a"]) == [b"again"]


async def test_values_expire_after_their_ttl(cache: AnyCache) -> None:
    await cache.set("short", b"1", 1)
    await cache.set("long", b"2", 60)
    await cache.set("forever", b"3", None)
    assert await cache.get_many(["short"]) == [b"1"]
    await asyncio.sleep(1.3)
    assert await cache.get_many(["short", "long", "forever"]) == [None, b"2", b"3"]


async def test_counters_count_from_far_from_zero(cache: AnyCache) -> None:
    first = await cache.incr_many(["c1", "c2"], 60)
    assert all(v > FAR_FROM_ZERO for v in first)
    assert first[0] != first[1]  # unpredictable, hence (almost surely) different
    assert await cache.incr_many(["c1"], 60) == [first[0] + 1]
    assert await cache.incr_many(["c2", "c1"], None) == [first[1] + 1, first[0] + 2]
    assert await cache.get_many(["c1", "c2"]) == [str(first[0] + 2).encode(), str(first[1] + 1).encode()]
    assert await cache.incr_many([], 60) == []


async def test_a_vanished_counter_does_not_repeat_its_values(cache: AnyCache) -> None:
    seen = await cache.incr_many(["c"], 1)
    seen += await cache.incr_many(["c"], 1)
    await asyncio.sleep(1.3)
    assert await cache.get_many(["c"]) == [None]
    (again,) = await cache.incr_many(["c"], 60)
    assert again > FAR_FROM_ZERO
    assert abs(again - seen[-1]) > 1000  # not 1, and not where it was


async def test_incarnation_is_known_after_a_command_and_stays(cache: AnyCache) -> None:
    await cache.get_many(["a"])
    first = cache.incarnation
    assert first
    await cache.set("a", b"1", 60)
    await cache.incr_many(["n"], 60)
    assert cache.incarnation == first


# --- the in-process LRU -------------------------------------------------------------------


async def test_memory_cache_keeps_to_its_budget_least_recently_used_first() -> None:
    cache = MemoryCache(max_bytes=3 * (1000 + 64 + 1))
    for key in "abc":
        await cache.set(key, b"x" * 1000, 60)
    await cache.get_many(["a"])  # a is now the most recently used
    await cache.set("d", b"x" * 1000, 60)
    assert [v is not None for v in await cache.get_many(["a", "b", "c", "d"])] == [True, False, True, True]
    assert cache.size_bytes <= 3 * (1000 + 64 + 1)
    await cache.set("huge", b"x" * 10_000, 60)  # never fits: not kept, nothing evicted for it
    assert await cache.get_many(["huge"]) == [None]
    assert len(cache) == 3


async def test_memory_cache_follows_its_clock() -> None:
    now = [100.0]
    cache = MemoryCache(clock=lambda: now[0])
    await cache.set("a", b"1", 10)
    now[0] += 9.9
    assert await cache.get_many(["a"]) == [b"1"]
    now[0] += 0.2
    assert await cache.get_many(["a"]) == [None]
    assert len(cache) == 0


# --- Redis: failures, restarts, prefixes ------------------------------------------------


def test_prefix_is_taken_out_of_the_url() -> None:
    assert split_prefix("redis://h:1/2?prefix=p-&db=3") == ("redis://h:1/2?db=3", "p-")
    assert split_prefix("redis://u:secret@h:1/0") == ("redis://u:secret@h:1/0", "")


async def test_redis_down_is_unavailable_and_fails_fast() -> None:
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0")
    try:
        for call in (
            cache.get_many(["a"]),
            cache.set("a", b"1", 60),
            cache.incr_many(["n"], 60),
        ):
            started = time.monotonic()
            with pytest.raises(Unavailable, match=r"cache at redis://127\.0\.0\.1"):
                await call
            assert time.monotonic() - started < 2.0
    finally:
        await cache.close()


@needs_redis
async def test_prefixes_keep_caches_apart() -> None:
    one, two = RedisCache(test_redis_url()), RedisCache(test_redis_url())
    try:
        await one.set("k", b"one", 60)
        assert await two.get_many(["k"]) == [None]
        await two.set("k", b"two", 60)
        assert await one.get_many(["k"]) == [b"one"]
    finally:
        await one.close()
        await two.close()


@needs_redis_server
async def test_redis_restart_changes_the_incarnation(throwaway: ThrowawayRedis) -> None:
    cache = RedisCache(with_prefix(throwaway.url))
    try:
        await cache.set("k", b"kept", None)
        before = cache.incarnation
        throwaway.save()
        throwaway.kill()
        with pytest.raises(Unavailable):
            await cache.get_many(["k"])
        throwaway.start()  # from the snapshot: the data went back in time
        # redis-py reconnects without an error; only the incarnation tells.
        assert await cache.get_many(["k"]) == [b"kept"]
        assert cache.incarnation not in ("", before)
    finally:
        await cache.close()


@needs_redis_server
async def test_a_paused_redis_times_out_quickly(throwaway: ThrowawayRedis) -> None:
    cache = RedisCache(throwaway.url)
    try:
        await cache.set("k", b"1", 60)
        throwaway.pause()
        started = time.monotonic()
        with pytest.raises(Unavailable, match="Timeout"):
            await cache.get_many(["k"])
        assert time.monotonic() - started < 2.0
        throwaway.resume()
        assert await cache.get_many(["k"]) == [b"1"]
    finally:
        throwaway.resume()
        await cache.close()
