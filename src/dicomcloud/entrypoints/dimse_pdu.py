"""Reading PDUs with a length limit (PS3.8 §9.3, Annex D.1).

pynetdicom reads a PDU by trusting the length in its header: a peer that claims a
4 GiB P-DATA-TF makes it allocate 4 GiB. For the AEs registered here (our SCP), the
DUL's ``_read_pdu_data`` checks the length first:

- a P-DATA-TF longer than the maximum length we advertise in the A-ASSOCIATE-AC
  (the peer must not send one, PS3.8 D.1.1), or any other PDU longer than
  ``max(that, OTHER_PDU_LIMIT)``, is not read: it counts as an invalid PDU (Evt19),
  so the state machine sends an A-ABORT (AA-8 / AA-1) and the association ends; a
  log line names the peer and the length, and ``on_refused`` gets the reason.
  Nothing more is read from that connection; it is closed. (So for an unknown PDU
  type, or a PDU that does not decode.)
- a PDU within the limit is read straight into one buffer of its size, as much
  as the kernel has per call, and counted (``on_received``). (pynetdicom reads
  4096 bytes per ``recv``: 130 system calls, and as many GIL hand-overs, for a
  512 KiB instance; under load each hand-over can wait a whole switch interval
  behind a CPU-bound thread, which cut concurrent ingest several-fold.)
- a peer that stops sending in the middle of a PDU for longer than the socket
  timeout (the network timeout, set on each accepted socket) loses the connection
  (Evt17) with a log line, instead of holding the association's thread forever.

Other AEs in the process (SCUs in tests) keep pynetdicom's own reader. The patch is
process-wide and idempotent, and keyed on the AE instance.
"""

from __future__ import annotations

import logging
import socket
import struct
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.dul import DULServiceProvider

log = logging.getLogger(__name__)

OTHER_PDU_LIMIT = 1 << 20  # A-ASSOCIATE-RQ with many presentation contexts stays far below this
PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
P_DATA_TF = 0x04


@dataclass(frozen=True)
class PduGuard:
    """What one AE accepts, and whom it tells. ``max_pdu_bytes`` 0: no limit."""

    max_pdu_bytes: int
    on_received: Callable[[Any, int, Any], None]  # (association, PDU bytes, decoded PDU)
    on_refused: Callable[[Any, str], None]  # (association, reason)

    def limit(self, pdu_type: int) -> int:
        if not self.max_pdu_bytes:
            return 0
        return self.max_pdu_bytes if pdu_type == P_DATA_TF else max(self.max_pdu_bytes, OTHER_PDU_LIMIT)


_GUARDS: weakref.WeakKeyDictionary[Any, PduGuard] = weakref.WeakKeyDictionary()
# pynetdicom's own reader, also when this module is imported again after patching
_PYNETDICOM_READ = getattr(
    DULServiceProvider._read_pdu_data, "_dicomcloud_original", DULServiceProvider._read_pdu_data
)


def guard(ae: Any, pdu_guard: PduGuard) -> None:
    """Read PDUs of ``ae``'s associations through :func:`_read_pdu_data`."""
    _GUARDS[ae] = pdu_guard
    DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]


def peer(assoc: Any) -> str:
    """The peer's address, and its calling AE title once its A-ASSOCIATE-RQ was read."""
    requestor = assoc.requestor
    calling = str(requestor.ae_title or "").strip()
    return f"{requestor.address}:{requestor.port}" + (f" (calling AE title {calling})" if calling else "")


def _read_into(raw: socket.socket, view: memoryview) -> int:
    """Fill ``view`` from ``raw``; the number of bytes read (short: the peer closed)."""
    read = 0
    while read < len(view):
        n = raw.recv_into(view[read:])
        if not n:
            break
        read += n
    return read


def _read_pdu_data(self: DULServiceProvider) -> None:
    """pynetdicom's ``DULServiceProvider._read_pdu_data`` with the length checked first:
    the same events (Evt3/4/6/10/12/13/16, Evt17 closed, Evt19 invalid)."""
    assoc = self.assoc
    pdu_guard = _GUARDS.get(assoc.ae)
    if pdu_guard is None:
        _PYNETDICOM_READ(self)
        return
    sock: Any = self.socket
    if getattr(self, "_dicomcloud_refused", False):
        # What follows an oversized PDU header is not read. Once the A-ABORT is out
        # (Sta13, awaiting the close), the connection is closed (Evt17).
        if self.state_machine.current_state == "Sta13":
            sock.close()
        return
    raw = sock.socket
    header = bytearray(6)
    try:
        complete = _read_into(raw, memoryview(header)) == 6
    except TimeoutError:
        log.warning("DIMSE: %s sent part of a PDU header, then nothing for %s s: connection closed",
                    peer(assoc), raw.gettimeout())  # fmt: skip
        complete = False
    except OSError:
        complete = False
    if not complete:
        self.event_queue.put("Evt17")
        return
    pdu_type, _, length = struct.unpack(">BBL", header)
    name = PDU_NAMES.get(pdu_type)
    if name is None:
        _refuse(self, pdu_guard, f"unknown PDU type 0x{pdu_type:02X}")
        return
    limit = pdu_guard.limit(pdu_type)
    if limit and length > limit:
        _refuse(self, pdu_guard, f"{name} PDU of {length} bytes, over the limit of {limit} bytes")
        return
    data = bytearray(6 + length)
    data[:6] = header
    try:
        read = _read_into(raw, memoryview(data)[6:])
    except TimeoutError:
        log.warning("DIMSE: %s stopped sending in the middle of a %s PDU of %d bytes for %s s: connection closed",
                    peer(assoc), name, length, raw.gettimeout())  # fmt: skip
        read = -1
    except OSError:
        read = -1
    if read != length:
        self.event_queue.put("Evt17")
        return
    try:
        pdu, event = self._decode_pdu(data)
    except Exception as exc:
        _refuse(self, pdu_guard, f"{name} PDU that cannot be decoded ({type(exc).__name__}: {exc})"[:300])
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)
    _tell(pdu_guard.on_received, assoc, len(data), pdu)


_read_pdu_data._dicomcloud_original = _PYNETDICOM_READ  # type: ignore[attr-defined]


def _refuse(dul: DULServiceProvider, pdu_guard: PduGuard, reason: str) -> None:
    """An invalid PDU (Evt19): the state machine sends an A-ABORT (PS3.8 §9.2, AA-8 / AA-1);
    nothing more is read from this connection."""
    log.warning("DIMSE: aborting the association with %s: %s", peer(dul.assoc), reason)
    dul._dicomcloud_refused = True  # type: ignore[attr-defined]
    dul.event_queue.put("Evt19")
    _tell(pdu_guard.on_refused, dul.assoc, reason)


def _tell(observer: Callable[..., None], *args: Any) -> None:
    """Observers only record: their failure never touches the association."""
    try:
        observer(*args)
    except Exception:
        log.exception("DIMSE: recording a PDU failed")
