"""The C-ECHO / C-STORE SCP (PS3.4 Annex A and B) on pynetdicom.

One handler decides the C-STORE status: it writes the instance through the
ingest use case (file fsync'ed and renamed, event durable on the bus) and
answers Success only then; any error becomes the DIMSE status from the
table in ``errors.py`` with an ErrorComment. Nagle's algorithm is disabled
on every association's socket (ARCHITECTURE §8).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationServer, AssociationSocket

from dicomcloud.domain.messages import Source
from dicomcloud.errors import DicomCloudError, dimse_status
from dicomcloud.settings import Settings
from dicomcloud.usecases.ingest import Ingest

log = logging.getLogger(__name__)
STATUS_SUCCESS = 0x0000
# fsyncs of received files run here while the handler thread publishes the event.
_DURABILITY = ThreadPoolExecutor(64, thread_name_prefix="fsync")
PUBLISH_TIMEOUT = 30.0


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def handle_store(event: Any, ingest: Ingest, settings: Settings, loop: asyncio.AbstractEventLoop) -> Dataset | int:
    """EVT_C_STORE: the one handler that decides the status (runs in the association thread)."""
    assoc = event.assoc
    called = assoc.requestor.primitive.called_ae_title if assoc.requestor.primitive else ""
    called_ae = called.decode() if isinstance(called, bytes) else str(called or settings.ae_title)
    calling_ae = str(assoc.requestor.ae_title or "").strip()
    tenant_id = settings.tenant_for_called_ae(called_ae.strip())
    request = event.request
    try:
        parsed = ingest.write_dataset(
            request.DataSet.getbuffer(),  # the dataset as received, not decoded
            str(event.context.transfer_syntax),
            tenant_id,
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            source_ae_title=calling_ae,
        )
        source = Source("dimse", calling_ae, called_ae.strip(), str(assoc.requestor.address))
        durable = _DURABILITY.submit(ingest.make_durable, parsed)  # overlaps the bus flush
        try:
            ingest.publish_blocking(parsed, source)
        finally:
            durable.result(timeout=PUBLISH_TIMEOUT)
    except DicomCloudError as exc:
        log.warning("C-STORE from %s refused: %s", calling_ae, exc.reason)
        return _status(dimse_status(exc), exc.reason)
    except TimeoutError:
        log.error("C-STORE from %s: the bus did not confirm within %ss", calling_ae, PUBLISH_TIMEOUT)
        return _status(0xA700, "the message bus did not confirm in time")
    except Exception as exc:
        log.exception("C-STORE from %s failed", calling_ae)
        return _status(0x0110, f"processing failure: {type(exc).__name__}")
    return STATUS_SUCCESS


def handle_echo(event: Any) -> int:
    return STATUS_SUCCESS


def handle_open(event: Any) -> None:
    """EVT_CONN_OPEN: no Nagle delay on this association's socket."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            log.debug("could not set TCP_NODELAY", exc_info=True)


def _tolerate_command_uids() -> None:
    """Let malformed UIDs in a C-STORE *command* through to our handler.

    pynetdicom otherwise drops the association on a UID it finds invalid in the
    command set (e.g. 65 characters), so the sender gets an abort instead of a
    status. Our ingest validates every UID itself and answers 0xC000 with the
    reason (PS3.4 B.2.3). This is pynetdicom's process-wide validator table.
    """
    _config.VALIDATORS["UI"] = lambda value: (True, "")


def _recv(self: Any, nr_bytes: int) -> bytearray:
    """AssociationSocket.recv reading into one buffer, as much as the kernel has.

    pynetdicom reads PDUs 4096 bytes per ``recv``: 130 system calls, and as many
    GIL hand-overs, for a 512 KiB instance. Under load each hand-over can wait
    a whole switch interval behind a CPU-bound thread, which cut concurrent
    ingest several-fold. Same contract: return what was read, short only when
    the peer closed the connection.
    """
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    read = 0
    while read < nr_bytes:
        n = self.socket.recv_into(view[read:], nr_bytes - read)
        if not n:
            del view
            return buffer[:read]
        read += n
    del view
    return buffer


def _read_pdus_in_one_go() -> None:
    """Install :func:`_recv` (pynetdicom's process-wide AssociationSocket class)."""
    AssociationSocket.recv = _recv  # type: ignore[method-assign]


def _share_port() -> None:
    """Set SO_REUSEPORT on pynetdicom's listening sockets (its ``server_bind`` sets only
    SO_REUSEADDR), so that several storescp processes listen on one port."""
    original = AssociationServer.server_bind
    if getattr(original, "_dicomcloud_reuse_port", False):
        return

    def server_bind(self: AssociationServer) -> None:
        if self.socket is not None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        original(self)

    server_bind._dicomcloud_reuse_port = True  # type: ignore[attr-defined]
    AssociationServer.server_bind = server_bind  # type: ignore[method-assign]


class StoreSCP:
    def __init__(self, settings: Settings, ingest: Ingest, loop: asyncio.AbstractEventLoop) -> None:
        self._settings = settings
        self._ingest = ingest
        self._loop = loop
        self._server: Any = None

    def start(self) -> None:
        _tolerate_command_uids()
        _read_pdus_in_one_go()
        if self._settings.dimse_reuse_port:
            _share_port()
        ae = AE(ae_title=self._settings.ae_title)
        ae.maximum_pdu_size = 0  # no limit on what peers may send us per PDU
        ae.maximum_associations = 64
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        if self._settings.allowed_calling_aes:
            ae.require_calling_aet = list(self._settings.allowed_calling_aes)
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, handle_store, [self._ingest, self._settings, self._loop]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_CONN_OPEN, handle_open),
        ]
        self._server = ae.start_server(
            (self._settings.dimse_host, self._settings.dimse_port),
            block=False,
            evt_handlers=handlers,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
