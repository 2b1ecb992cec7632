"""The WadoAccessLog (ARCHITECTURE §2 ``server``): every DICOMweb request, to the bus.

Writing the log never slows or fails the request it records. The HTTP edge
(``entrypoints/http/access_log.py``) only calls :meth:`AccessLog.append`, which
puts the record in a bounded in-memory queue and returns; a background task
(:meth:`AccessLog.run`) publishes batches to ``ACCESS_LOG_QUEUE``, retrying
what the bus refuses (the machinery is :class:`~dicomcloud.usecases.bus_log.BusLog`).

:func:`describe_route` names what a route template addresses (service and level).
"""

from __future__ import annotations

from typing import Any

from dicomcloud.domain.messages import ACCESS_LOG_QUEUE, WadoAccessed
from dicomcloud.ports import Bus
from dicomcloud.usecases.bus_log import BusLog

QIDO_RS = "qido-rs"
WADO_RS = "wado-rs"
STOW_RS = "stow-rs"
WADO_URI = "wado-uri"


def describe_route(method: str, route: str) -> tuple[str, str]:
    """(service, level) of a route template relative to the service root.

    Level is the resource addressed: for QIDO-RS the level searched
    (``/studies/{study}/series`` → ``series``, PS3.18 §10.6); for WADO-RS the
    deepest UID in the path, or ``frames`` / ``bulkdata``; for STOW-RS ``study``;
    WADO-URI addresses an ``instance`` (PS3.18 §9). ``("", "")`` when no route matched
    or for a method no transaction uses (a CORS preflight ``OPTIONS``, a ``DELETE``).
    """
    if not route or method not in ("GET", "HEAD", "POST"):
        return "", ""
    if route == "/wado":
        return WADO_URI, "instance"
    if method == "POST":
        return STOW_RS, "study"
    segments = route.strip("/").split("/")
    if segments[-1] in ("studies", "series", "instances"):
        return QIDO_RS, {"studies": "study", "series": "series", "instances": "instance"}[segments[-1]]
    if "frames" in segments:
        return WADO_RS, "frames"
    if "bulkdata" in segments:
        return WADO_RS, "bulkdata"
    for name, level in (("{instance}", "instance"), ("{series}", "series"), ("{study}", "study")):
        if name in segments:
            return WADO_RS, level
    return "", ""


class AccessLog(BusLog[WadoAccessed]):
    """A bounded queue of access records and the task that publishes them (``usecases/bus_log.py``)."""

    def __init__(self, bus: Bus, **options: Any) -> None:
        """``options``: BusLog's tuning (capacity, batch_size, interval, max_backoff, report_every)."""
        super().__init__(bus, ACCESS_LOG_QUEUE, _record_id, name="access log", **options)


def _record_id(record: WadoAccessed) -> str:
    return record.record_id
