"""The read cache of the hot read paths (QIDO-RS answers, series and study metadata).

Invalidation by generations, never by deletion::

    dc:epoch                        global; INCR'ed when cached data can no longer be trusted
    dc:epoch:server                 the Cache incarnation (Redis run_id) the epoch was set under
    dc:{tenant}:gen                 INCR'ed by every writer of the tenant
    dc:{tenant}:gen:{study}         INCR'ed by every writer of the study
    dc:{tenant}:{kind}:{study}:{epoch}.{gen}:{digest}    an answer (study scope)
    dc:{tenant}:{kind}:{epoch}.{gen}:{digest}            an answer (tenant scope)

*Writers* (the consumer after ``Index.apply``, the loader after loading
DicomImageMeta) call :meth:`ReadCache.invalidate` once their effects are
committed: it INCRs the generations of the studies of the batch and of their
tenants. It never fails the writer: indexing must not wait for a cache. When
the cache is unreachable, the lost increments are paid for at once when it is
back — the writer INCRs the epoch (every answer cached so far is dropped),
retrying every ``retry_seconds`` in the background and before its next
invalidation. Readers meanwhile skip the unreachable cache and read the
stores; the one window left is a partition that cuts a writer, but not the
readers, off the cache: answers of the studies written meanwhile stay as they
were until it heals (at most ``ttl_seconds``).

*Readers* (:meth:`ReadCache.fetch`) read the epoch and the generation first,
then the answer stored under a key that contains them. An answer is computed
after the generations it is stored under were read, and every write INCRs
them after it is committed, so a reader can never get an answer computed
before the last committed write it could have seen: a write that raced the
computation moved the generation, and its key is not read again.

The *epoch* covers what generations cannot: a Cache that lost increments.
It is INCR'ed (by whichever process notices first; every reader reads the
current one with the generations, in the same round trip)

- when ``dc:epoch:server`` differs from the Cache's incarnation: the Redis
  server restarted, was restored from a snapshot or failed over, so
  generations may have gone back while old answers came back with them;
- after this process saw a cache error (an outage): answers written before
  it are not trusted again.

A missing generation or epoch (evicted, expired) is re-created by an INCR,
which starts from an unpredictable value rather than 0 (``ports.Cache``), so
it never repeats a value old answers are stored under.

When the cache fails, readers compute the answer themselves and skip the
cache for ``breaker_seconds`` (a dead Redis costs one short timeout per
second, not one per request). Answers expire after ``ttl_seconds``,
generations after twice that (a vanished generation is only a miss).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson

from dicomcloud.errors import Unavailable
from dicomcloud.ports import Cache

log = logging.getLogger(__name__)

EPOCH = "dc:epoch"
EPOCH_SERVER = "dc:epoch:server"
MAX_ENTRY_BYTES = 32 * 1024 * 1024  # larger answers are served, not cached


def tenant_generation(tenant_id: str) -> str:
    return f"dc:{tenant_id}:gen"


def study_generation(tenant_id: str, study_instance_uid: str) -> str:
    return f"dc:{tenant_id}:gen:{study_instance_uid}"


def digest(parts: Sequence[str]) -> str:
    """A short, collision-resistant name for what an answer depends on."""
    return hashlib.blake2b(orjson.dumps(list(parts)), digest_size=16).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bypasses: int = 0  # answered without the cache (it failed, or was skipped after a failure)
    errors: int = 0
    epoch_bumps: int = 0


@dataclass(frozen=True, slots=True)
class _Version:
    stamp: str  # "{epoch}.{generation}"
    incarnation: str
    failures: int  # this process's failure count when the stamp was read


class ReadCache:
    """Answers by generation; ``cache=None`` caches nothing (no shared cache, several processes)."""

    def __init__(
        self,
        cache: Cache | None,
        ttl_seconds: int,
        *,
        breaker_seconds: float = 1.0,
        retry_seconds: float = 0.5,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self._ttl = ttl_seconds
        self._breaker_seconds = breaker_seconds
        self._max_entry_bytes = max_entry_bytes
        self._clock = clock
        self._closed_at = 0.0  # the breaker lets requests through from this time on
        self._failures = 0
        self._bump_pending = False
        self._bump_lock = asyncio.Lock()
        self._retry_seconds = retry_seconds
        self._owed = False  # increments were lost: the epoch must move once the cache is back
        self._settling: asyncio.Task[None] | None = None
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self._cache is not None

    # -- failures ----------------------------------------------------------------------

    def _failed(self, exc: Unavailable) -> None:
        if self._clock() >= self._closed_at:
            log.warning("read cache: %s; answering without it for %.1f s", exc.reason, self._breaker_seconds)
        self._closed_at = self._clock() + self._breaker_seconds
        self._failures += 1
        self._bump_pending = True
        self.stats.errors += 1

    def _usable(self) -> Cache | None:
        if self._cache is None or self._clock() < self._closed_at:
            return None
        return self._cache

    # -- writers -----------------------------------------------------------------------

    async def invalidate(self, studies: Iterable[tuple[str, str]]) -> None:
        """INCR the generations of these (tenant, study) pairs and of their tenants.

        Call after the write is committed. Never raises: when the cache is
        unreachable the increments are owed, and paid for by an epoch bump as
        soon as it is reachable again (see the module docstring). Writers do
        not skip the cache when the breaker is open: their INCR must happen.
        """
        if self._cache is None:
            return
        keys = sorted({k for t, s in studies for k in (tenant_generation(t), study_generation(t, s))})
        if not keys:
            return
        try:
            if self._owed:
                await self._pay(self._cache)
            await self._cache.incr_many(keys, 2 * self._ttl)
        except Unavailable as exc:
            self._failed(exc)
            self._owe()

    @property
    def owes_epoch_bump(self) -> bool:
        return self._owed

    def _owe(self) -> None:
        self._owed = True
        if self._settling is None or self._settling.done():
            self._settling = asyncio.get_running_loop().create_task(self._settle())

    async def _pay(self, cache: Cache) -> None:
        await cache.incr_many([EPOCH], None)
        self._owed = False
        self.stats.epoch_bumps += 1
        log.info("read cache reachable again: epoch bumped for the invalidations it missed")

    async def _settle(self) -> None:
        while self._owed and self._cache is not None:
            await asyncio.sleep(self._retry_seconds)
            try:
                if self._owed:
                    await self._pay(self._cache)
            except Unavailable:
                continue

    # -- readers -----------------------------------------------------------------------

    async def _bump_epoch(self, cache: Cache, incarnation: str) -> None:
        async with self._bump_lock:
            if not self._bump_pending:  # another task may have bumped it meanwhile
                epoch, server = await cache.get_many([EPOCH, EPOCH_SERVER])
                if epoch is not None and server == incarnation.encode():
                    return
            self._bump_pending = False
            await cache.incr_many([EPOCH], None)
            # The incarnation read *before* the INCR: if the server changed in between,
            # the next reader sees a mismatch and bumps again (never the reverse).
            await cache.set(EPOCH_SERVER, incarnation.encode(), None)
            self.stats.epoch_bumps += 1
            log.info("read cache: epoch bumped (incarnation %s)", incarnation[:12])

    async def _version(self, cache: Cache, generation: str) -> _Version | None:
        for _ in range(3):
            failures = self._failures
            epoch, server, gen = await cache.get_many([EPOCH, EPOCH_SERVER, generation])
            incarnation = cache.incarnation  # as of a connection at least as new as the read
            if self._bump_pending or epoch is None or server != incarnation.encode():
                await self._bump_epoch(cache, incarnation)
                continue
            if gen is None:
                gen = str((await cache.incr_many([generation], 2 * self._ttl))[0]).encode()
            return _Version(f"{int(epoch)}.{int(gen)}", incarnation, failures)
        return None  # the server keeps changing under us: do without

    async def fetch(
        self,
        tenant_id: str,
        study_instance_uid: str | None,
        kind: str,
        parts: Sequence[str],
        compute: Callable[[], Awaitable[bytes]],
    ) -> bytes:
        """The answer named by ``kind`` and ``parts``, cached under the study's
        generation (``study_instance_uid`` given) or the tenant's (None).

        ``parts`` must name everything the answer depends on besides the data
        of that scope (the query, the base URL, the media type, …).
        """
        cache = self._usable()
        if cache is None:
            self.stats.bypasses += 1
            return await compute()
        if study_instance_uid is None:
            generation, scope = tenant_generation(tenant_id), ""
        else:
            generation, scope = (
                study_generation(tenant_id, study_instance_uid),
                f"{study_instance_uid}:",
            )
        version: _Version | None = None
        key = ""
        try:
            version = await self._version(cache, generation)
            if version is not None:
                key = f"dc:{tenant_id}:{kind}:{scope}{version.stamp}:{digest(parts)}"
                (hit,) = await cache.get_many([key])
                # Trusted only if neither the server nor this process's view of it
                # changed while it was read.
                if hit is not None and cache.incarnation == version.incarnation and self._failures == version.failures:
                    self.stats.hits += 1
                    return hit
        except Unavailable as exc:
            self._failed(exc)
            version = None
        if version is None:
            self.stats.bypasses += 1
            return await compute()
        self.stats.misses += 1
        value = await compute()
        if len(value) <= self._max_entry_bytes and self._usable() is not None:
            try:
                await cache.set(key, value, self._ttl)
            except Unavailable as exc:
                self._failed(exc)
        return value

    async def close(self) -> None:
        if self._settling is not None:
            self._settling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._settling
        if self._cache is not None:
            await self._cache.close()
