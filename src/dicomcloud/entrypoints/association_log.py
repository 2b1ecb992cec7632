"""The store log's associations: one :class:`DimseAssociation` per DIMSE association.

Observers bound to pynetdicom's events (they only record, the C-STORE handler alone
decides) keep a small record per association, from EVT_CONN_OPEN to its end:

- the admission (``storescp.handle_requested``) fills in the AE titles and tenant;
- EVT_REJECTED / EVT_RELEASED / EVT_ABORTED give the outcome (and what we know of
  the reason: our admission refusal, the A-ASSOCIATE-RJ diagnostic, our PDU limit,
  the network timeout, the peer's A-ABORT, a lost connection);
- the C-STORE handler counts what it answered; the PDU reader counts bytes.

The record is complete once both the outcome and EVT_CONN_CLOSE have been seen (in
either order: an A-ABORT from the peer closes the connection before the association
thread hears of it). It then goes to a :class:`~dicomcloud.usecases.bus_log.BusLog`,
whose ``append`` never blocks: writing the log never slows or fails the association
it records. A connection that closes without an A-ASSOCIATE-RQ (a port probe) is not
recorded, unless we refused what it sent. Should pynetdicom end an association
without any of these events, the record is published when the association object is
collected, as aborted.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pynetdicom import evt
from pynetdicom.pdu import A_ABORT_RQ

from dicomcloud.domain.messages import (
    ASSOCIATION_ABORTED,
    ASSOCIATION_REJECTED,
    ASSOCIATION_RELEASED,
    DimseAssociation,
)

log = logging.getLogger(__name__)

# (result, source, diagnostic) of an A-ASSOCIATE-RJ (PS3.8 Table 9-21)
REJECTIONS = {
    (1, 1, 1): "no reason given",
    (1, 1, 2): "application context name not supported",
    (1, 1, 3): "calling AE title not recognized",
    (1, 1, 7): "called AE title not recognized",
    (1, 2, 2): "protocol version not supported",
    (2, 3, 1): "temporary congestion",
    (2, 3, 2): "local limit exceeded (too many associations)",
}


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class _Record:
    association_id: str
    started_at: str
    address: str
    requested: bool = False
    admitted: bool = False
    tenant_id: str = ""
    calling_ae_title: str = ""
    called_ae_title: str = ""
    outcome: str = ""
    reason: str = ""
    ended_at: str = ""
    closed: bool = False
    published: bool = False
    instances_stored: int = 0
    instances_failed: int = 0
    failure_statuses: Counter[str] = field(default_factory=Counter)
    bytes_received: int = 0

    def message(self) -> DimseAssociation:
        return DimseAssociation(
            association_id=self.association_id,
            tenant_id=self.tenant_id,
            calling_ae_title=self.calling_ae_title,
            called_ae_title=self.called_ae_title,
            address=self.address,
            started_at=self.started_at,
            ended_at=self.ended_at or _now(),
            outcome=self.outcome or ASSOCIATION_ABORTED,
            reason=self.reason,
            instances_stored=self.instances_stored,
            instances_failed=self.instances_failed,
            failure_statuses=dict(self.failure_statuses),
            bytes_received=self.bytes_received,
        )


class AssociationLog:
    """Per-association records, fed by pynetdicom events; finished ones go to ``sink``."""

    def __init__(self, sink: Callable[[DimseAssociation], None]) -> None:
        self._sink = sink
        self._records: weakref.WeakKeyDictionary[Any, _Record] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def handlers(self) -> list[tuple[Any, Callable[..., None]]]:
        """(event, handler) pairs to bind on the SCP."""
        return [
            (evt.EVT_CONN_OPEN, self._opened),
            (evt.EVT_REJECTED, self._rejected),
            (evt.EVT_RELEASED, self._released),
            (evt.EVT_ABORTED, self._aborted),
            (evt.EVT_CONN_CLOSE, self._closed),
        ]

    # --- what the SCP tells us --------------------------------------------------------

    def requested(
        self, assoc: Any, tenant_id: str, called_ae_title: str, calling_ae_title: str, *, admitted: bool
    ) -> None:
        """An A-ASSOCIATE-RQ for ``tenant_id`` arrived; ``admitted``: the admission let it in."""
        record = self._record(assoc)
        record.requested = True
        record.admitted = admitted
        record.tenant_id = tenant_id
        record.called_ae_title = called_ae_title
        record.calling_ae_title = calling_ae_title

    def refused(self, assoc: Any, reason: str) -> None:
        """We rejected the request or aborted the association, for ``reason``."""
        record = self._record(assoc)
        if not record.reason:
            record.reason = reason

    def tenant(self, assoc: Any) -> str:
        """The tenant admitted for this association ("" if none was)."""
        record = self._records.get(assoc)
        return record.tenant_id if record is not None and record.admitted else ""

    def answered(self, assoc: Any, status: int) -> None:
        """The C-STORE handler answered ``status`` (success and warnings: stored)."""
        record = self._record(assoc)
        if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
            record.instances_stored += 1
        else:
            record.instances_failed += 1
            record.failure_statuses[f"0x{status:04X}"] += 1

    def received(self, assoc: Any, size: int, pdu: Any) -> None:
        """A PDU of ``size`` bytes was read (PDU reader, DUL thread)."""
        record = self._record(assoc)
        record.bytes_received += size
        if isinstance(pdu, A_ABORT_RQ) and not record.reason:
            record.reason = f"A-ABORT from the peer ({pdu.source_str}: {pdu.reason_str})"

    # --- pynetdicom events --------------------------------------------------------------

    def _record(self, assoc: Any) -> _Record:
        record = self._records.get(assoc)
        if record is None:
            with self._lock:
                record = self._records.get(assoc)
                if record is None:
                    record = self._start(assoc)
        return record

    def _start(self, assoc: Any) -> _Record:
        requestor = assoc.requestor
        record = _Record(str(uuid.uuid4()), _now(), str(requestor.address or ""))
        self._records[assoc] = record
        finalizer = weakref.finalize(assoc, self._abandoned, record)
        finalizer.atexit = False  # type: ignore[misc]  # a property, not a slot (typeshed)
        return record

    def _opened(self, event: Any) -> None:
        self._record(event.assoc)

    def _rejected(self, event: Any) -> None:
        record = self._record(event.assoc)
        if not record.reason:
            rj = event.assoc.acceptor.primitive
            key = (rj.result, rj.result_source, rj.diagnostic) if rj is not None else None
            record.reason = f"A-ASSOCIATE-RJ: {REJECTIONS.get(key, str(key)) if key else 'rejected'}"
        self._end(event.assoc, ASSOCIATION_REJECTED)

    def _released(self, event: Any) -> None:
        self._end(event.assoc, ASSOCIATION_RELEASED)

    def _aborted(self, event: Any) -> None:
        assoc = event.assoc
        record = self._record(assoc)
        if not record.reason:
            if assoc.dul.idle_timer_expired():
                record.reason = f"nothing received for {assoc.network_timeout} s (network timeout)"
            elif getattr(assoc, "_sent_abort", False):
                record.reason = "aborted by the archive"
            else:
                record.reason = "the connection was lost without A-RELEASE (A-P-ABORT)"
        self._end(assoc, ASSOCIATION_ABORTED)

    def _closed(self, event: Any) -> None:
        record = self._record(event.assoc)
        with self._lock:
            record.closed = True
            record.ended_at = record.ended_at or _now()
            if not record.outcome and not record.requested and record.reason:
                record.outcome = ASSOCIATION_ABORTED  # e.g. an oversized A-ASSOCIATE-RQ
        self._publish_when_done(record)

    def _end(self, assoc: Any, outcome: str) -> None:
        record = self._record(assoc)
        with self._lock:
            if not record.outcome:
                record.outcome = outcome
        self._publish_when_done(record)

    def _publish_when_done(self, record: _Record) -> None:
        with self._lock:
            if record.published or not record.closed:
                return
            if not record.outcome:
                if record.requested:
                    return  # the association thread still has to say how it ended
                record.published = True  # a connection without an A-ASSOCIATE-RQ: not an association
                return
            record.published = True
        self._send(record)

    def _abandoned(self, record: _Record) -> None:
        """The association object is gone: publish what was not (pynetdicom ended it silently)."""
        with self._lock:
            if record.published or not (record.requested or record.reason):
                return
            record.published = True
            if not record.outcome:
                record.outcome = ASSOCIATION_ABORTED
                record.reason = record.reason or "the association ended without A-RELEASE"
        self._send(record)

    def _send(self, record: _Record) -> None:
        try:
            self._sink(record.message())
        except Exception:
            log.exception("association log: could not record association %s", record.association_id)
