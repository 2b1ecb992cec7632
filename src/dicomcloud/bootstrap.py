"""Settings → adapters → use cases. The only module that picks concrete adapters."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import asyncpg

from dicomcloud.adapters.filesystem import FileBlobStore
from dicomcloud.adapters.journal_bus import JournalBus
from dicomcloud.adapters.memory_cache import MemoryCache
from dicomcloud.adapters.oidc import JwksKeys
from dicomcloud.adapters.postgres.embedded import EmbeddedPostgres
from dicomcloud.adapters.postgres.index import PostgresIndex
from dicomcloud.adapters.postgres.pool import NoDatabase, Pool, create_pool
from dicomcloud.adapters.postgres.schema import migrate
from dicomcloud.adapters.postgres.warehouse import PostgresWarehouse
from dicomcloud.domain.layout import InstanceKey
from dicomcloud.entrypoints.http.context import tenant_prefix
from dicomcloud.errors import Unavailable
from dicomcloud.ports import BlobStore, Bus, Cache, Index, Warehouse
from dicomcloud.settings import Settings, mask_url
from dicomcloud.usecases.authenticate import TokenVerifier
from dicomcloud.usecases.build_metadata import MetadataBuilder
from dicomcloud.usecases.convert import Convert
from dicomcloud.usecases.index_instances import IndexInstances
from dicomcloud.usecases.ingest import Ingest
from dicomcloud.usecases.load_warehouse import LoadWarehouse
from dicomcloud.usecases.read_cache import ReadCache

log = logging.getLogger(__name__)


@dataclass
class Archive:
    """Everything a service needs, opened once and closed by ``stack``."""

    settings: Settings
    blobs: BlobStore
    bus: Bus
    index: Index
    warehouse: Warehouse
    ingest: Ingest
    metadata: MetadataBuilder
    index_instances: IndexInstances
    load_warehouse: LoadWarehouse
    convert: Convert
    database_url: str
    cache: ReadCache
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    def instance_url(self, key: InstanceKey) -> str:
        """Absolute URL of an instance as written into stored metadata (BulkDataURIs)."""
        return (
            f"{self.stored_service_url(key.tenant_id)}/studies/{key.study_instance_uid}"
            f"/series/{key.series_instance_uid}/instances/{key.sop_instance_uid}"
        )

    def stored_service_url(self, tenant_id: str) -> str:
        return self.settings.base_url + tenant_prefix(tenant_id, self.settings.default_tenant)

    async def close(self) -> None:
        await self.stack.aclose()


def token_verifier(settings: Settings) -> TokenVerifier | None:
    """The bearer-token verifier of the DICOMweb server, on the provider's JWKS; None when
    authentication is off (settings.load allows that on loopback or when asked)."""
    if not settings.auth_issuer:
        return None
    keys = JwksKeys(
        settings.auth_issuer,
        jwks_url=settings.auth_jwks_url,
        ttl=settings.auth_jwks_ttl_seconds,
        min_refresh=settings.auth_jwks_min_refresh_seconds,
        timeout=settings.auth_provider_timeout,
    )
    return TokenVerifier(
        keys,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        algorithms=settings.auth_algorithms,
        leeway=settings.auth_leeway_seconds,
        tenant_claim=settings.auth_tenant_claim,
    )


def _bus(settings: Settings) -> Bus:
    if settings.bus_url.startswith("kafka://"):
        from dicomcloud.adapters.kafka_bus import KafkaBus  # imported only when used

        try:
            return KafkaBus.from_url(settings.bus_url)
        except ValueError as exc:
            raise Unavailable(f"bus {mask_url(settings.bus_url)!r}: {exc}") from exc
    if settings.bus_url and not settings.bus_url.startswith("embedded"):
        raise Unavailable(f"bus {mask_url(settings.bus_url)!r} is not supported (embedded or kafka://host:port)")
    return JournalBus(settings.data_dir / "bus")


def _cache(settings: Settings) -> Cache | None:
    """Redis when configured; else an in-process cache, but only when every writer
    runs in this process (the embedded bus is owned by one process): a process's
    own cache would never hear of another process's writes."""
    if settings.redis_url:
        from dicomcloud.adapters.redis_cache import RedisCache  # imported only when used

        try:
            return RedisCache(settings.redis_url)
        except ValueError as exc:
            raise Unavailable(f"cache {mask_url(settings.redis_url)!r}: {exc}") from exc
    if not settings.bus_url or settings.bus_url.startswith("embedded"):
        return MemoryCache()
    log.warning("no --redis-url with a distributed bus: read answers are not cached")
    return None


async def _database(settings: Settings, stack: AsyncExitStack, needed: bool) -> tuple[Pool, str]:
    """The pool; a service that does not need the database neither starts nor waits for one."""
    database_url = settings.database_url
    if not needed:
        if not database_url:
            return NoDatabase("this service runs without a database"), ""
        pool = await create_pool(database_url, min_size=0)  # connects on first use only
        stack.push_async_callback(pool.close)
        return pool, database_url
    if not database_url:
        embedded = EmbeddedPostgres(settings.data_dir / "pg")
        database_url = embedded.start()
        stack.callback(embedded.stop)
    pool = await create_pool(database_url)
    stack.push_async_callback(pool.close)
    async with pool.acquire() as conn:
        await migrate(conn)
    return pool, database_url


async def open_archive(settings: Settings, *, database: bool = True) -> Archive:
    """Open the stores for a set of services; ``database=False`` for those that need none (storescp)."""
    stack = AsyncExitStack()
    try:
        pool, database_url = await _database(settings, stack, database)
        blobs = FileBlobStore(settings.root)
        bus = _bus(settings)
        stack.push_async_callback(bus.close)
        index = PostgresIndex(pool)
        warehouse = PostgresWarehouse(pool)
        cache = ReadCache(_cache(settings), settings.cache_ttl_seconds)
        stack.push_async_callback(cache.close)
        archive: Archive
        metadata = MetadataBuilder(blobs, index, lambda key: archive.instance_url(key))
        archive = Archive(
            settings=settings,
            blobs=blobs,
            bus=bus,
            index=index,
            warehouse=warehouse,
            ingest=Ingest(blobs, bus, max_instance_bytes=settings.max_instance_bytes),
            metadata=metadata,
            index_instances=IndexInstances(blobs, index, bus, cache, settings.viewer_transfer_syntaxes),
            load_warehouse=LoadWarehouse(warehouse, cache),
            convert=Convert(blobs, bus),
            database_url=database_url,
            cache=cache,
            stack=stack,
        )
        return archive
    except (OSError, asyncpg.PostgresError) as exc:
        await stack.aclose()
        raise Unavailable(f"could not open the archive: {exc}") from exc
    except BaseException:
        await stack.aclose()
        raise
