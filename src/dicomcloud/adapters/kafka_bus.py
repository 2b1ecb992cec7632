"""The distributed message bus: Apache Kafka (any Kafka-API broker), ``--bus kafka://…``.

URL: ``kafka://host:port[,host:port][?prefix=P&partitions=3&timeout=10&linger_ms=0]``

- ``prefix``: prepended to every topic and consumer-group name on the broker
  (several archives, or test runs, sharing one cluster); records handed back
  carry the logical topic name again.
- ``partitions``: for the topics this bus creates (default 3), replication factor
  ``replication`` (default 1; set it to the cluster's so that ``acks=all`` means
  several replicas).
- ``timeout``: seconds a publish waits for its acknowledgements before it raises
  :class:`~dicomcloud.errors.Unavailable` (default 10).
- ``linger_ms``: how long the producer waits to fill a batch (default 0: a
  C-STORE waits for its own acknowledgement, and records that arrive while a
  request is in flight are batched anyway; 1 ms tripled the median publish
  latency here, 1.4 → 4.3 ms).

Library: **confluent-kafka** (librdkafka), not aiokafka. ``publish_blocking`` is
called from pynetdicom's handler threads, many at once: librdkafka's producer is
thread-safe and reports each record through a delivery callback, so a thread
produces and waits on its own event — no event loop has to be reached from the
DIMSE thread, and all threads share one producer's batches (linger) to the
broker. aiokafka's producer lives on one asyncio loop only, so every DIMSE
publish would have to hop onto the loop and back, and its pure-Python protocol
costs several times the CPU per record of librdkafka's C client on a 2-core
machine. The price is that the consumer's calls block: each consumer runs them
on a thread of its own (one thread, so the non-thread-safe consumer is only
ever used from it), and ``poll``, ``commit`` and ``seek`` await that thread.

Semantics (the :class:`~dicomcloud.ports.Bus` port, ARCHITECTURE §4, §6.1-2):

- key = the record key (the StudyInstanceUID), partitioned by murmur2 like the
  Java clients, so one study's events stay in order on one partition whoever
  produced them;
- ``acks=all`` and idempotence: ``publish`` returns only after *every* record is
  acknowledged by all in-sync replicas, and raises ``Unavailable`` with the
  broker's reason on any failure or when the timeout passes;
- the topics of :data:`~dicomcloud.domain.messages.ALL_TOPICS` and their
  dead-letter topics are created when the bus starts (any other topic on first
  use);
- consumers are consumer-group members with auto-commit off: ``commit`` stores
  offset + 1 of the last record per partition, synchronously;
  ``seek_to_committed`` rewinds every assigned partition to its committed offset
  (retry later); a new group starts at the earliest record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from dicomcloud.domain.messages import ALL_TOPICS, dead_letter_topic
from dicomcloud.errors import Unavailable
from dicomcloud.ports import Record

log = logging.getLogger(__name__)

T = TypeVar("T")
Item = tuple[str, str, bytes]  # topic, key, value


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    bootstrap_servers: str
    prefix: str = ""
    partitions: int = 3
    replication: int = 1
    timeout: float = 10.0
    linger_ms: int = 0

    @classmethod
    def from_url(cls, url: str) -> KafkaOptions:
        """Parse ``kafka://host:port[,host:port][?prefix=…&partitions=…&timeout=…]``."""
        parts = urlsplit(url)
        if parts.scheme != "kafka" or not parts.netloc:
            raise ValueError(f"not a kafka:// URL: {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        known = {"prefix", "partitions", "replication", "timeout", "linger_ms"}
        unknown = set(query) - known
        if unknown:
            raise ValueError(f"unknown kafka:// option(s) {sorted(unknown)}; known: {sorted(known)}")
        options = cls(
            bootstrap_servers=parts.netloc,
            prefix=query.get("prefix", ""),
            partitions=int(query.get("partitions", 3)),
            replication=int(query.get("replication", 1)),
            timeout=float(query.get("timeout", 10.0)),
            linger_ms=int(query.get("linger_ms", 0)),
        )
        if options.partitions < 1 or options.replication < 1 or options.timeout <= 0:
            raise ValueError(f"kafka:// options out of range: {url!r}")
        return options


def _reason(error: KafkaError | KafkaException | BaseException | None) -> str:
    if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
        error = error.args[0]
    if isinstance(error, KafkaError):
        return f"{error.name()}: {error.str()}"
    return str(error)


class _Delivery:
    """Counts the acknowledgements of one publish call; the first error wins."""

    __slots__ = ("done", "error", "remaining")

    def __init__(self, count: int, done: Callable[[], None]) -> None:
        self.remaining = count
        self.error: KafkaError | None = None
        self.done = done

    def __call__(self, error: KafkaError | None, _message: Message) -> None:  # the producer's poll thread
        if error is not None and self.error is None:
            self.error = error
        self.remaining -= 1
        if self.remaining == 0:
            self.done()


class _Repeats(logging.Filter):
    """librdkafka reports a broker that is away on every reconnect attempt, from every
    client: one line per kind of complaint every ``seconds`` is enough."""

    def __init__(self, seconds: float = 30.0) -> None:
        super().__init__()
        self._seconds = seconds
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -1e9) < self._seconds:
                return False
            if len(self._last) > 1000:
                self._last.clear()
            self._last[kind] = now
        return True


_LIBRDKAFKA_LOG = logging.getLogger("dicomcloud.kafka")
_LIBRDKAFKA_LOG.addFilter(_Repeats())


class KafkaBus:
    def __init__(self, options: KafkaOptions) -> None:
        self.options = options
        self._closed = False
        self._common: dict[str, Any] = {
            "bootstrap.servers": options.bootstrap_servers,
            "socket.nagle.disable": True,  # ARCHITECTURE §8: Nagle costs ~40-90 ms per round trip
            "client.id": "dicomcloud",
            "logger": _LIBRDKAFKA_LOG,  # librdkafka's own log, not stderr
        }
        self._producer_lock = threading.Lock()
        self._producer_failed = False
        self._last_error = ""  # the producer's last complaint (e.g. all brokers down), for reasons
        self._producer = self._new_producer()
        self._admin = AdminClient(dict(self._common))
        self._known_topics: set[str] = set()
        self._topics_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._serve_callbacks, name="kafka-producer", daemon=True)
        self._poller.start()
        self._executor = ThreadPoolExecutor(4, thread_name_prefix="kafka-admin")
        startup = [*ALL_TOPICS, *(dead_letter_topic(t) for t in ALL_TOPICS)]
        self._startup: Future[None] = self._executor.submit(self._create_topics_quietly, startup)

    @classmethod
    def from_url(cls, url: str) -> KafkaBus:
        return cls(KafkaOptions.from_url(url))

    # -- names -------------------------------------------------------------
    def _name(self, topic: str) -> str:
        return self.options.prefix + topic

    def _logical(self, name: str) -> str:
        prefix = self.options.prefix
        return name[len(prefix) :] if prefix and name.startswith(prefix) else name

    # -- topics ------------------------------------------------------------
    def _create_topics_quietly(self, topics: Sequence[str]) -> None:
        try:
            self.ensure_topics(topics)
        except Unavailable as exc:  # the first publish or poll tries again, and raises
            log.warning("could not create the bus topics at start: %s", exc.reason)

    def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create the (logical) topics that do not exist yet; blocking."""
        if self._known_topics.issuperset(topics):
            return
        with self._topics_lock:
            missing = [t for t in dict.fromkeys(topics) if t not in self._known_topics]
            if not missing:
                return
            timeout = self.options.timeout
            new = [NewTopic(self._name(t), self.options.partitions, self.options.replication) for t in missing]
            futures = self._admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
            for topic in missing:
                try:
                    futures[self._name(topic)].result(timeout + 5)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise Unavailable(f"cannot create topic {self._name(topic)!r}: {_reason(exc)}") from exc
                except Exception as exc:  # a future that timed out, or librdkafka's own error
                    raise Unavailable(f"cannot create topic {self._name(topic)!r}: {exc!r}") from exc
                self._known_topics.add(topic)

    async def _ensure_topics_async(self, topics: Sequence[str]) -> None:
        if not self._known_topics.issuperset(topics):
            await asyncio.get_running_loop().run_in_executor(self._executor, self.ensure_topics, topics)

    # -- producing ---------------------------------------------------------
    def _new_producer(self) -> Producer:
        return Producer(
            {
                **self._common,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": self.options.linger_ms,
                "compression.type": "lz4",
                # librdkafka fails a record it could not deliver in this time: the
                # publisher's own wait below is only a backstop.
                "message.timeout.ms": int(self.options.timeout * 1000),
                "partitioner": "murmur2_random",  # the Java clients' partitioning of keys
                "error_cb": self._on_producer_error,
            }
        )

    def _on_producer_error(self, error: KafkaError) -> None:
        self._last_error = _reason(error)
        if error.fatal():
            log.error("kafka producer failed for good, a new one is made: %s", _reason(error))
            with self._producer_lock:
                self._producer_failed = True
        elif _LIBRDKAFKA_LOG.filter(logging.makeLogRecord({"msg": self._last_error})):
            log.warning("kafka producer: %s", self._last_error)

    def _current_producer(self) -> Producer:
        with self._producer_lock:
            if self._producer_failed:  # e.g. an idempotence sequence error: start afresh
                self._producer_failed = False
                self._producer = self._new_producer()
            return self._producer

    def _serve_callbacks(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            try:
                producer.poll(0.1)
            except Exception:  # a callback of ours failed: keep serving the others
                log.exception("kafka delivery callback failed")

    def _produce_from(self, producer: Producer, items: Sequence[Item], start: int, delivery: _Delivery) -> int:
        """Hand items to the producer from ``start``; the index reached when its local queue is full."""
        for i in range(start, len(items)):
            topic, key, value = items[i]
            try:
                producer.produce(self._name(topic), value, key.encode(), on_delivery=delivery)
            except BufferError:  # the local queue is full: the caller waits for the broker to catch up
                return i
            except KafkaException as exc:
                raise Unavailable(f"kafka refused a record for {topic!r}: {_reason(exc)}") from exc
        return len(items)

    def _check(self, delivery: _Delivery) -> None:
        if delivery.error is not None:
            raise Unavailable(f"kafka did not acknowledge: {_reason(delivery.error)}{self._context()}")

    def _context(self) -> str:
        return f" (last producer error: {self._last_error})" if self._last_error else ""

    async def publish(self, items: Sequence[Item]) -> None:
        if self._closed:
            raise Unavailable("the message bus is closed")
        if not items:
            return
        await self._ensure_topics_async([t for t, _, _ in items])
        loop = asyncio.get_running_loop()
        acknowledged = loop.create_future()

        def resolve() -> None:
            if not acknowledged.done():
                acknowledged.set_result(None)

        def done() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(resolve)

        delivery = _Delivery(len(items), done)
        timeout = self.options.timeout
        deadline = time.monotonic() + timeout
        producer, produced = self._current_producer(), 0
        while (produced := self._produce_from(producer, items, produced, delivery)) < len(items):
            if time.monotonic() > deadline:
                raise Unavailable("the kafka producer's queue stayed full")
            await asyncio.sleep(0.005)
        try:
            await asyncio.wait_for(acknowledged, timeout + 1.0)
        except TimeoutError:
            raise Unavailable(
                f"kafka did not acknowledge {len(items)} record(s) within {timeout:g} s{self._context()}"
            ) from None
        self._check(delivery)

    def publish_blocking(self, items: Sequence[Item]) -> None:
        """Publish from any thread but the event loop's; returns once every record is acknowledged."""
        if self._closed:
            raise Unavailable("the message bus is closed")
        if not items:
            return
        self.ensure_topics([t for t, _, _ in items])
        acknowledged = threading.Event()
        delivery = _Delivery(len(items), acknowledged.set)
        timeout = self.options.timeout
        deadline = time.monotonic() + timeout
        producer, produced = self._current_producer(), 0
        while (produced := self._produce_from(producer, items, produced, delivery)) < len(items):
            if time.monotonic() > deadline:
                raise Unavailable("the kafka producer's queue stayed full")
            time.sleep(0.005)
        if not acknowledged.wait(timeout + 1.0):
            raise Unavailable(f"kafka did not acknowledge {len(items)} record(s) within {timeout:g} s{self._context()}")
        self._check(delivery)

    # -- consuming ---------------------------------------------------------
    def consumer(self, group: str, topics: Sequence[str]) -> KafkaConsumer:
        config = {
            **self._common,
            "group.id": self.options.prefix + group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            # The broker answers a fetch as soon as a record is there; an idle one it holds
            # this long, so idle members cost the broker little (100 ms: 11% of a core).
            "fetch.wait.max.ms": 500,
            # A member that died without leaving (SIGKILL, OOM, power) holds its partitions
            # until the broker stops hearing from it: 10 s, not librdkafka's 45 s.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
        }
        return KafkaConsumer(self, config, tuple(topics))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            remaining = self._producer.flush(self.options.timeout)
            if remaining:
                log.warning("%d record(s) were not delivered before the bus closed", remaining)
            self._stop.set()
            self._poller.join()

        await asyncio.to_thread(shut)
        self._executor.shutdown(wait=False, cancel_futures=True)


class KafkaConsumer:
    """One consumer-group member; its blocking client calls run on a thread of its own."""

    def __init__(self, bus: KafkaBus, config: dict[str, Any], topics: tuple[str, ...]) -> None:
        self._bus = bus
        self._config = config
        self._topics = topics
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")
        self._consumer: Consumer | None = None
        self._closed = False

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise Unavailable("the consumer is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    def _client(self) -> Consumer:
        """The consumer, subscribed on first use (on the consumer's thread)."""
        if self._consumer is None:
            self._bus.ensure_topics(self._topics)
            consumer = Consumer(self._config)
            consumer.subscribe([self._bus._name(t) for t in self._topics])
            self._consumer = consumer
        return self._consumer

    def _record(self, message: Message) -> Record:
        key = message.key()
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        return Record(
            self._bus._logical(topic),
            key.decode("utf-8", "replace") if key is not None else "",
            message.value() or b"",
            partition,
            offset,
        )

    def _poll(self, max_records: int, timeout: float) -> list[Record]:
        consumer = self._client()
        deadline = time.monotonic() + timeout
        while True:
            # Return as soon as anything is there: poll() waits for the first record,
            # consume(…, 0) adds what has been fetched already.
            messages = consumer.consume(max_records, 0)
            if not messages:
                first = consumer.poll(max(0.0, deadline - time.monotonic()))
                messages = [first] if first is not None else []
                if first is not None and max_records > 1:
                    messages += consumer.consume(max_records - 1, 0)
            records: list[Record] = []
            for message in messages:
                error = message.error()
                if error is None:
                    records.append(self._record(message))
                elif error.fatal():
                    raise Unavailable(f"kafka consumer failed: {_reason(error)}")
                else:  # transient (a topic not known yet, a broker away): librdkafka retries by itself
                    log.warning("kafka consumer: %s", _reason(error))
            if records or time.monotonic() >= deadline:
                return records

    async def poll(self, max_records: int, timeout: float) -> list[Record]:
        return await self._run(lambda: self._poll(max_records, timeout))

    def _commit(self, records: Sequence[Record]) -> None:
        next_offsets: dict[tuple[str, int], int] = {}
        for record in records:
            key = (self._bus._name(record.topic), record.partition)
            next_offsets[key] = max(next_offsets.get(key, 0), record.offset + 1)
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in next_offsets.items()]
        try:
            self._client().commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. the partition went to another member meanwhile
            raise Unavailable(f"kafka commit failed: {_reason(exc)}") from exc

    async def commit(self, records: Sequence[Record]) -> None:
        if records:
            await self._run(lambda: self._commit(records))

    def _seek_to_committed(self) -> None:
        consumer = self._client()
        assigned = consumer.assignment()
        if not assigned:
            return
        try:
            committed = consumer.committed(assigned, timeout=self._bus.options.timeout)
        except KafkaException as exc:
            raise Unavailable(f"kafka could not tell the committed offsets: {_reason(exc)}") from exc
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            try:
                consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as exc:
                # _STATE: just assigned and not fetching yet, so it starts at the committed offset anyway.
                if exc.args[0].code() != KafkaError._STATE:
                    raise Unavailable(f"kafka seek failed: {_reason(exc)}") from exc

    async def seek_to_committed(self) -> None:
        """Rewind every assigned partition to its committed offset: uncommitted records come again."""
        await self._run(self._seek_to_committed)

    async def assignment(self) -> list[tuple[str, int]]:
        """The (logical topic, partition) pairs this member holds now (tests, operators)."""

        def assigned() -> list[tuple[str, int]]:
            consumer = self._client()
            return sorted((self._bus._logical(tp.topic), tp.partition) for tp in consumer.assignment())

        return await self._run(assigned)

    async def close(self) -> None:
        if self._closed:
            return
        consumer = self._consumer
        if consumer is not None:
            await self._run(consumer.close)  # leaves the group: its partitions move at once
        self._closed = True
        self._thread.shutdown(wait=False)
