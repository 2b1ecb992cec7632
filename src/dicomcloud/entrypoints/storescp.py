"""The C-ECHO / C-STORE SCP (PS3.4 Annex A and B) on pynetdicom.

Admission: on each A-ASSOCIATE-RQ, :func:`handle_requested` asks the admission
policy (``domain/tenancy.py``: called AE title → tenant, allowed calling AE titles
and source networks) and answers A-ASSOCIATE-RJ when it refuses; the tenant it
admits is the one every C-STORE of the association is stored under.

One handler decides the C-STORE status: it writes the instance through the
ingest use case (file fsync'ed and renamed, event durable on the bus) and
answers Success only then; any error becomes the DIMSE status from the
table in ``errors.py`` with an ErrorComment. Nagle's algorithm is disabled
on every association's socket (ARCHITECTURE §8).

Limits come from the settings: the maximum PDU length we advertise and enforce on
receive (``entrypoints/dimse_pdu.py``), the ACSE, DIMSE and network timeouts (the
network timeout also bounds a read stalled in the middle of a PDU) and the number
of concurrent associations. Every association, admitted or not, becomes one
DimseAssociation on the store log (``entrypoints/association_log.py``).
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
from pynetdicom.transport import AssociationServer

from dicomcloud.domain.messages import DimseAssociation, Source
from dicomcloud.domain.tenancy import DimseAdmission
from dicomcloud.entrypoints.association_log import AssociationLog
from dicomcloud.entrypoints.dimse_pdu import PduGuard, guard
from dicomcloud.errors import STATUS_NOT_AUTHORIZED, DicomCloudError, Forbidden, dimse_status
from dicomcloud.settings import Settings
from dicomcloud.usecases.bus_log import BusLog
from dicomcloud.usecases.ingest import Ingest

log = logging.getLogger(__name__)
STATUS_SUCCESS = 0x0000
# fsyncs of received files run here while the handler thread publishes the event.
_DURABILITY = ThreadPoolExecutor(64, thread_name_prefix="fsync")
PUBLISH_TIMEOUT = 30.0

# A-ASSOCIATE-RJ (PS3.8 Table 9-21): result, source, diagnostic
REJECTED_PERMANENT = 0x01
SOURCE_SERVICE_USER = 0x01
DIAGNOSTIC_NO_REASON = 0x01
DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED = 0x03


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def _title(value: object) -> str:
    return (value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")).strip()


def handle_requested(event: Any, admission: DimseAdmission, associations: AssociationLog) -> None:
    """EVT_REQUESTED: admit the association, or answer A-ASSOCIATE-RJ (PS3.8 §7.1.1.7).

    A handler that rejects here stops pynetdicom from negotiating (its maintainers'
    way to reject per association, pydicom/pynetdicom#408). A calling AE title that
    is not allowed, or one calling from outside the tenant's source networks, gets
    rejected-permanent / service-user / "calling AE title not recognized" (3): it is
    the calling AE title *at that address* we do not recognize (Orthanc answers the
    same). The reason is logged and recorded, never sent: A-ASSOCIATE-RJ carries none.
    """
    assoc = event.assoc
    request = assoc.requestor.primitive
    called, calling = _title(request.called_ae_title), _title(request.calling_ae_title)
    address = str(assoc.requestor.address or "")
    try:
        tenant_id = admission.admit(called, calling, address)
    except Forbidden as exc:
        reason, diagnostic = exc.reason, DIAGNOSTIC_CALLING_AE_NOT_RECOGNIZED
    except Exception:
        log.exception("DIMSE: the admission of %s from %s failed; rejected", calling, address)
        reason, diagnostic = "the admission check failed", DIAGNOSTIC_NO_REASON
    else:
        associations.requested(assoc, tenant_id, called, calling, admitted=True)
        return
    associations.requested(assoc, admission.tenant_for(called), called, calling, admitted=False)
    associations.refused(assoc, reason)
    log.warning("DIMSE: association from %s:%s rejected: %s", address, assoc.requestor.port, reason)
    assoc.acse.send_reject(REJECTED_PERMANENT, SOURCE_SERVICE_USER, diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()  # as pynetdicom does after its own rejections: the A-ASSOCIATE-RJ is sent first


def handle_store(event: Any, ingest: Ingest, associations: AssociationLog) -> Dataset | int:
    """EVT_C_STORE: the one handler that decides the status (runs in the association thread)."""
    status = _store(event, ingest, associations.tenant(event.assoc))
    associations.answered(event.assoc, status if isinstance(status, int) else int(status.Status))
    return status


def _store(event: Any, ingest: Ingest, tenant_id: str) -> Dataset | int:
    assoc = event.assoc
    called_ae = _title(assoc.requestor.primitive.called_ae_title if assoc.requestor.primitive else "")
    calling_ae = _title(assoc.requestor.ae_title)
    if not tenant_id:  # never admitted: cannot happen, but never store without a tenant
        return _status(STATUS_NOT_AUTHORIZED, "the association was not admitted")
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
        source = Source("dimse", calling_ae, called_ae, str(assoc.requestor.address))
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


def handle_open(event: Any, network_timeout: float | None) -> None:
    """EVT_CONN_OPEN: no Nagle delay on this association's socket, and no read or write
    on it that waits longer than the network timeout (a peer stalled in mid-PDU)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(network_timeout)
        except OSError:
            log.debug("could not set TCP_NODELAY or the socket timeout", exc_info=True)


def _tolerate_command_uids() -> None:
    """Let malformed UIDs in a C-STORE *command* through to our handler.

    pynetdicom otherwise drops the association on a UID it finds invalid in the
    command set (e.g. 65 characters), so the sender gets an abort instead of a
    status. Our ingest validates every UID itself and answers 0xC000 with the
    reason (PS3.4 B.2.3). This is pynetdicom's process-wide validator table.
    """
    _config.VALIDATORS["UI"] = lambda value: (True, "")


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
    """The SCP; finished associations go to ``association_log`` (None: not recorded)."""

    def __init__(
        self,
        settings: Settings,
        ingest: Ingest,
        loop: asyncio.AbstractEventLoop,
        association_log: BusLog[DimseAssociation] | None = None,
    ) -> None:
        self._settings = settings
        self._ingest = ingest
        self._loop = loop
        self._association_log = association_log
        self._server: Any = None

    def _record(self, association: DimseAssociation) -> None:
        if self._association_log is not None:
            self._association_log.append(association)

    def start(self) -> None:
        s = self._settings
        admission = s.dimse_admission
        _tolerate_command_uids()
        if s.dimse_reuse_port:
            _share_port()
        ae = AE(ae_title=s.ae_title)
        ae.maximum_pdu_size = s.dimse_max_pdu_bytes  # advertised in the A-ASSOCIATE-AC; 0: no limit
        ae.maximum_associations = s.dimse_max_associations
        network_timeout = s.dimse_network_timeout if s.dimse_network_timeout > 0 else None
        ae.network_timeout = network_timeout
        ae.acse_timeout = s.dimse_acse_timeout if s.dimse_acse_timeout > 0 else None
        ae.dimse_timeout = s.dimse_timeout if s.dimse_timeout > 0 else None
        associations = AssociationLog(self._record)
        guard(ae, PduGuard(s.dimse_max_pdu_bytes, associations.received, associations.refused))
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, handle_open, [network_timeout]),
            (evt.EVT_REQUESTED, handle_requested, [admission, associations]),
            (evt.EVT_C_STORE, handle_store, [self._ingest, associations]),
            (evt.EVT_C_ECHO, handle_echo),
            *associations.handlers(),
        ]
        self._server = ae.start_server((s.dimse_host, s.dimse_port), block=False, evt_handlers=handlers)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
