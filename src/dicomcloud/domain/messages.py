"""Events on the bus (ARCHITECTURE §4): small frozen records, versioned JSON.

Names are past tense. ``encode``/``decode`` are the only (de)serialisers;
a message of an unknown type or version is rejected, never guessed at.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, get_args

import orjson

from dicomcloud.errors import InvalidInput

# Topic names (ARCHITECTURE §4).
STORAGE_QUEUE = "storage_queue"
LOG_QUEUE = "log_queue"
DICOM_STATE_QUEUE = "dicom_state_queue"
DICOM_IMAGE_QUEUE = "dicom_image_queue"
CONVERSION_QUEUE = "conversion_queue"
ACCESS_LOG_QUEUE = "wado_access_log_queue"
CONVERSION_RESULT_QUEUE = "conversion_result_queue"
ALL_TOPICS = (
    STORAGE_QUEUE,
    LOG_QUEUE,
    DICOM_STATE_QUEUE,
    DICOM_IMAGE_QUEUE,
    CONVERSION_QUEUE,
    ACCESS_LOG_QUEUE,
    CONVERSION_RESULT_QUEUE,
)


DEAD_LETTER_SUFFIX = ".dlq"


def dead_letter_topic(topic: str) -> str:
    return topic + DEAD_LETTER_SUFFIX


@dataclass(frozen=True, slots=True)
class Source:
    """Where an instance came from: a DIMSE association or a STOW-RS client."""

    kind: str  # "dimse" | "stow"
    calling_ae_title: str = ""
    called_ae_title: str = ""
    address: str = ""


@dataclass(frozen=True, slots=True)
class InstanceStored:
    """An instance's file is durable under ROOT (published by storescp / STOW-RS)."""

    TYPE: ClassVar[str] = "InstanceStored"
    VERSION: ClassVar[int] = 1

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str
    file_name: str
    file_path: str  # relative to ROOT
    file_size: int
    received_at: str  # ISO 8601, UTC
    source: Source


@dataclass(frozen=True, slots=True)
class DicomStateMeta:
    """A series' index state changed (published by the consumer)."""

    TYPE: ClassVar[str] = "DicomStateMeta"
    VERSION: ClassVar[int] = 1

    tenant_id: str
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    revision: int
    number_of_series_related_instances: int
    number_of_study_related_series: int
    number_of_study_related_instances: int
    modality: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class DicomImageMeta:
    """One indexed instance, wide (patient…instance) for the warehouse."""

    TYPE: ClassVar[str] = "DicomImageMeta"
    VERSION: ClassVar[int] = 1

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str
    file_path: str
    file_size: int
    received_at: str
    values: dict[str, Any] = field(default_factory=dict)  # column -> match value, all levels
    study: dict[str, Any] = field(default_factory=dict)  # DICOM JSON of study (+patient) attrs
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConversionRequested:
    """An instance is stored in a syntax the viewer cannot decode (published by the consumer).

    ``attempt`` counts from 1; the converter publishes the request again with the
    next attempt when one failed (``usecases/convert.py``).
    """

    TYPE: ClassVar[str] = "ConversionRequested"
    VERSION: ClassVar[int] = 1

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    file_path: str  # the original, relative to ROOT
    source_transfer_syntax_uid: str
    target_transfer_syntax_uid: str
    attempt: int = 1
    requested_at: str = ""  # ISO 8601, UTC, of the first request


# ConversionResult.status
CONVERSION_SUCCESS = "success"  # the rendition is in place
CONVERSION_RETRYING = "retrying"  # an attempt failed; the request was published again
CONVERSION_FAILED = "failed"  # the last attempt failed: given up, with the reason
CONVERSION_UNSUPPORTED = "unsupported"  # never converted (video, JPIP, no decoder): not retried
CONVERSION_STATUSES = (CONVERSION_SUCCESS, CONVERSION_RETRYING, CONVERSION_FAILED, CONVERSION_UNSUPPORTED)


@dataclass(frozen=True, slots=True)
class ConversionResult:
    """What one conversion attempt did (published by the converter, loaded by the loader).

    ``reused``: the rendition was already there and current (a redelivered request),
    nothing was written; the warehouse keeps the row of the conversion that wrote it.
    """

    TYPE: ClassVar[str] = "ConversionResult"
    VERSION: ClassVar[int] = 1

    tenant_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    source_transfer_syntax_uid: str
    target_transfer_syntax_uid: str
    status: str  # one of CONVERSION_STATUSES
    attempt: int
    duration_ms: float
    finished_at: str  # ISO 8601, UTC
    error: str = ""
    rendition_path: str = ""  # relative to ROOT; "" unless success
    rendition_size: int = 0
    reused: bool = False


@dataclass(frozen=True, slots=True)
class WadoAccessed:
    """One DICOMweb request was answered: a row of the WadoAccessLog (published by the server).

    Every DICOMweb transaction counts (QIDO-RS, WADO-RS, STOW-RS, rendered, thumbnail,
    WADO-URI); the name is the design's. ``route`` is the route template relative to the
    tenant's service root (``/studies/{study}/series/{series}/metadata``, ``/wado``; ""
    when no route matched), never the raw path; no query string and no credentials are
    kept. ``subject`` is the token's ``sub`` ("" until authentication exists).
    ``record_id`` (a UUID) makes the load idempotent.
    """

    TYPE: ClassVar[str] = "WadoAccessed"
    VERSION: ClassVar[int] = 1

    record_id: str
    requested_at: str  # ISO 8601, UTC, when the request arrived
    tenant_id: str
    subject: str
    client_address: str
    method: str
    route: str
    service: str  # qido-rs | wado-rs | stow-rs | wado-uri | "" (no route)
    level: str  # study | series | instance | frames | bulkdata | "" (see usecases/access_log.py)
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    status: int
    request_bytes: int
    response_bytes: int
    duration_ms: float


# DimseAssociation.outcome
ASSOCIATION_RELEASED = "released"  # accepted, and ended by an A-RELEASE (PS3.8 §7.2)
ASSOCIATION_ABORTED = "aborted"  # ended by an A-ABORT / A-P-ABORT, a lost connection or one of our limits
ASSOCIATION_REJECTED = "rejected"  # answered with an A-ASSOCIATE-RJ
ASSOCIATION_OUTCOMES = (ASSOCIATION_RELEASED, ASSOCIATION_ABORTED, ASSOCIATION_REJECTED)


@dataclass(frozen=True, slots=True)
class DimseAssociation:
    """One DIMSE association ended: a row of the store log's association table (published
    by storescp on ``log_queue``, beside the InstanceStored of what it stored).

    ``tenant_id`` is the tenant its called AE title addresses (admitted or not; "" when
    the connection ended before an A-ASSOCIATE-RQ was read). ``reason`` says why it was
    rejected or aborted, when that is known; it never quotes anything secret.
    ``failure_statuses`` counts the C-STORE failure statuses answered, by hex code
    (``{"0xC000": 2}``). ``bytes_received`` counts whole PDUs read from the peer.
    ``association_id`` (a UUID) makes the load idempotent.
    """

    TYPE: ClassVar[str] = "DimseAssociation"
    VERSION: ClassVar[int] = 1

    association_id: str
    tenant_id: str
    calling_ae_title: str
    called_ae_title: str
    address: str
    started_at: str  # ISO 8601, UTC: the connection was accepted
    ended_at: str  # ISO 8601, UTC: the connection was closed
    outcome: str  # one of ASSOCIATION_OUTCOMES
    reason: str
    instances_stored: int
    instances_failed: int
    failure_statuses: dict[str, int]
    bytes_received: int


Message = (
    InstanceStored
    | DicomStateMeta
    | DicomImageMeta
    | ConversionRequested
    | ConversionResult
    | WadoAccessed
    | DimseAssociation
)
_TYPES: dict[str, type[Any]] = {cls.TYPE: cls for cls in get_args(Message)}


def encode(message: Message) -> bytes:
    # Shallow: orjson writes nested dataclasses (Source) itself. dataclasses.asdict
    # deep-copies the DICOM JSON of a DicomImageMeta, ~2.5 ms each on the event loop.
    body = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    body["type"] = message.TYPE
    body["version"] = message.VERSION
    return orjson.dumps(body)


def decode(data: bytes) -> Message:
    """Parse a message; raises :class:`InvalidInput` for anything not understood."""
    try:
        body = orjson.loads(data)
        cls = _TYPES[body.pop("type")]
        version = body.pop("version")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"not a dicomcloud message: {exc}") from exc
    if version != cls.VERSION:
        raise InvalidInput(f"{cls.TYPE} version {version} is not supported")
    try:
        if cls is InstanceStored:
            body["source"] = Source(**body["source"])
        message: Message = cls(**body)
    except (TypeError, KeyError) as exc:
        raise InvalidInput(f"malformed {cls.TYPE}: {exc}") from exc
    if isinstance(message, ConversionResult) and message.status not in CONVERSION_STATUSES:
        raise InvalidInput(f"ConversionResult status {message.status!r} is not one of {CONVERSION_STATUSES}")
    if isinstance(message, ConversionRequested | ConversionResult) and (
        not isinstance(message.attempt, int) or message.attempt < 1
    ):
        raise InvalidInput(f"{cls.TYPE} attempt {message.attempt!r} is not a positive integer")
    if isinstance(message, WadoAccessed):
        _check_access(message)
    if isinstance(message, DimseAssociation):
        _check_association(message)
    return message


def _check_access(message: WadoAccessed) -> None:
    """What the warehouse would refuse is refused here, so it is dead-lettered, not retried."""
    try:
        uuid.UUID(message.record_id)
        datetime.fromisoformat(message.requested_at)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"malformed WadoAccessed: {exc}") from exc
    _check_texts(message)
    numbers = (message.status, message.request_bytes, message.response_bytes)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers) or not isinstance(
        message.duration_ms, int | float
    ):
        raise InvalidInput("malformed WadoAccessed: status, byte counts and duration must be numbers")


def _check_association(message: DimseAssociation) -> None:
    """What the warehouse would refuse is refused here, so it is dead-lettered, not retried."""
    try:
        uuid.UUID(message.association_id)
        datetime.fromisoformat(message.started_at)
        datetime.fromisoformat(message.ended_at)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"malformed DimseAssociation: {exc}") from exc
    if message.outcome not in ASSOCIATION_OUTCOMES:
        raise InvalidInput(f"DimseAssociation outcome {message.outcome!r} is not one of {ASSOCIATION_OUTCOMES}")
    _check_texts(message)
    statuses = message.failure_statuses
    numbers = [message.instances_stored, message.instances_failed, message.bytes_received]
    if not isinstance(statuses, dict) or not all(isinstance(k, str) for k in statuses):
        raise InvalidInput("malformed DimseAssociation: failure_statuses must map status codes to counts")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in [*numbers, *statuses.values()]):
        raise InvalidInput("malformed DimseAssociation: counts and byte counts must be non-negative integers")


def _check_texts(message: WadoAccessed | DimseAssociation) -> None:
    """Every ``str`` field holds text PostgreSQL can store (no NUL)."""
    texts = [getattr(message, f.name) for f in dataclasses.fields(message) if f.type == "str"]
    if not all(isinstance(t, str) and "\x00" not in t for t in texts):
        raise InvalidInput(f"malformed {message.TYPE}: a text field is not text")
