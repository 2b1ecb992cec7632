"""Domain round trips and validation: storage keys, UIDs, TenantIDs, messages, error tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomcloud import errors
from dicomcloud.domain.layout import (
    InstanceKey,
    SeriesKey,
    StudyKey,
    instance_path,
    parse_instance_path,
    series_metadata_path,
    study_metadata_path,
)
from dicomcloud.domain.messages import DicomImageMeta, DicomStateMeta, InstanceStored, Source, decode, encode
from dicomcloud.domain.uids import validate_tenant, validate_uid
from dicomcloud.settings import load, mask_url

component = st.integers(min_value=0, max_value=10**12).map(str)
uids = st.lists(component, min_size=2, max_size=8).map(".".join).filter(lambda u: len(u) <= 64)
tenants = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


@given(tenants, uids, uids, uids)
def test_instance_path_round_trip(tenant: str, study: str, series: str, sop: str) -> None:
    key = InstanceKey(tenant, study, series, sop)
    path = instance_path(key)
    assert parse_instance_path(path) == key
    assert path.split("/")[:3] == [tenant, study, series]
    assert series_metadata_path(key.series) == f"{tenant}/metadata/{study}/{series}.json"
    assert study_metadata_path(key.series.study) == f"{tenant}/metadata/{study}.json"


@given(st.text(max_size=80))
def test_no_text_escapes_the_layout(text: str) -> None:
    """Whatever a client sends, a key either validates to digits and dots or is refused."""
    try:
        key = InstanceKey("t", "1.2", "1.2.3", text)
    except errors.InvalidInput:
        return
    assert set(key.sop_instance_uid) <= set("0123456789.")
    assert ".." not in instance_path(key)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("../x", "not a UID"),
        ("1." + "2" * 63, "65 characters"),
        ("1.2.abc", "not a UID"),
        ("1..2", "not a UID"),
        (".1.2", "not a UID"),
        ("1.2/3", "not a UID"),
    ],
)
def test_invalid_uids_are_refused_with_the_reason(value: str, reason: str) -> None:
    with pytest.raises(errors.InvalidUID, match=reason):
        validate_uid(value, "SOPInstanceUID")


def test_uid_padding_is_tolerated() -> None:
    assert validate_uid("1.2.3\x00") == "1.2.3"


@pytest.mark.parametrize("value", ["", "../a", "a/b", "-a", "a" * 64, "ä", "a b", "Hosp-B", "HOSPB"])
def test_invalid_tenants_are_refused(value: str) -> None:
    with pytest.raises(errors.InvalidTenant):
        validate_tenant(value)


def test_keys_validate_every_component() -> None:
    with pytest.raises(errors.InvalidTenant):
        StudyKey("../etc", "1.2")
    with pytest.raises(errors.InvalidUID):
        SeriesKey("t", "1.2", "1.2.x")


sources = st.builds(Source, st.sampled_from(["dimse", "stow"]), st.text(max_size=16), st.text(max_size=16))


@given(
    st.builds(
        InstanceStored,
        tenant_id=tenants,
        study_instance_uid=uids,
        series_instance_uid=uids,
        sop_instance_uid=uids,
        sop_class_uid=uids,
        transfer_syntax_uid=uids,
        patient_id=st.text(max_size=64),
        file_name=st.text(max_size=70),
        file_path=st.text(max_size=200),
        file_size=st.integers(min_value=0, max_value=2**40),
        received_at=st.datetimes().map(lambda d: d.isoformat()),
        source=sources,
    )
)
def test_instance_stored_round_trip(message: InstanceStored) -> None:
    assert decode(encode(message)) == message


def test_other_messages_round_trip() -> None:
    state = DicomStateMeta("t", "P", "1.2", "1.2.3", 4, 5, 1, 5, "CT", "2024-01-01T00:00:00+00:00")
    image = DicomImageMeta(
        "t",
        "1.2",
        "1.2.3",
        "1.2.3.4",
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.1.2.1",
        "P",
        "t/1.2/1.2.3/1.2.3.4.dcm",
        10,
        "2024-01-01T00:00:00+00:00",
        values={"rows": 512},
        instance={"00280010": {"vr": "US", "Value": [512]}},
    )
    assert decode(encode(state)) == state
    assert decode(encode(image)) == image


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b'{"type": "Nope", "version": 1}',
        b'{"type": "DicomStateMeta", "version": 9}',
        b'{"type": "DicomStateMeta", "version": 1, "tenant_id": "t"}',
    ],
)
def test_bad_messages_are_refused(data: bytes) -> None:
    with pytest.raises(errors.InvalidInput):
        decode(data)


@pytest.mark.parametrize(
    ("exc", "dimse", "http"),
    [
        (errors.InvalidUID("x"), 0xC000, 400),
        (errors.MalformedDicom("x"), 0xC000, 400),
        (errors.MissingAttribute("x"), 0xA900, 400),
        (errors.DatasetMismatch("x"), 0xA900, 400),
        (errors.UnsupportedMediaType("x"), 0xC000, 415),
        (errors.PayloadTooLarge("x"), 0xA700, 413),
        (errors.NotFound("x"), 0x0110, 404),
        (errors.NotAcceptable("x"), 0x0110, 406),
        (errors.Unavailable("x"), 0xA700, 503),
    ],
)
def test_error_tables(exc: errors.DicomCloudError, dimse: int, http: int) -> None:
    assert errors.dimse_status(exc) == dimse
    assert errors.http_status(exc) == http


def test_settings_precedence_and_masking() -> None:
    env = {
        "DICOMCLOUD_HTTP_PORT": "9000",
        "DICOMCLOUD_AE_TENANTS": "CT1=a, MR1=b",
        "DICOMCLOUD_DATABASE_URL": "postgresql://u:secret@h/db",
    }
    settings = load({"http_port": 9100}, env=env)
    assert settings.http_port == 9100
    assert settings.dimse_admission.tenant_for("MR1") == "b"
    assert settings.dimse_admission.tenant_for("OTHER") == "default"
    assert "secret" not in str(settings.masked())
    assert mask_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"  # Redis: no user
    assert mask_url("redis://h:6379/0?password=secret&db=1") == "redis://h:6379/0?password=***&db=1"
    assert mask_url("postgresql://u@h/db?sslmode=require&Password=pw") == "postgresql://u@h/db?sslmode=require&Password=***"
    with pytest.raises(ValueError):
        load(env={"DICOMCLOUD_AE_TENANTS": "CT1=../x"})


def test_file_meta_without_preamble_is_accepted_and_normalised() -> None:
    from io import BytesIO

    from pydicom import dcmread

    from dicomcloud.usecases.ingest import normalize_part10, parse_part10
    from tests.factory import make_instance, part10_bytes

    full = part10_bytes(make_instance(rows=8, columns=8))
    bare = full[128:]  # 'DICM' + file meta + dataset
    assert normalize_part10(bare) == full
    no_prefix = full[132:]  # file meta + dataset, as pydicom writes an in-memory dataset
    normalised = normalize_part10(no_prefix)
    assert normalised == full
    assert parse_part10(normalised, "t").key.sop_instance_uid == dcmread(BytesIO(full)).SOPInstanceUID
    garbage = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"  # a dataset with no file meta: refused later
    assert normalize_part10(garbage) == garbage


@pytest.mark.parametrize(
    "transfer_syntax",
    ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"],
)
def test_dimse_dataset_is_filed_and_wrapped_in_valid_file_meta(transfer_syntax: str) -> None:
    """What storescp writes: our File Meta Information + the dataset bytes as received."""
    from io import BytesIO

    from pydicom import dcmread

    from dicomcloud.domain.part10 import IMPLEMENTATION_CLASS_UID, file_meta, parse_dataset
    from tests.factory import dataset_bytes, make_instance, part10_bytes

    ds = make_instance(rows=8, columns=8, transfer_syntax=transfer_syntax)
    dataset = dataset_bytes(part10_bytes(ds))
    parsed = parse_dataset(dataset, transfer_syntax, "t")
    assert parsed.key == InstanceKey("t", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert parsed.patient_id == ds.PatientID
    written = file_meta(parsed.sop_class_uid, parsed.key.sop_instance_uid, transfer_syntax, "MODALITY1") + dataset
    back = dcmread(BytesIO(written))
    assert back.file_meta.TransferSyntaxUID == transfer_syntax
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert back.file_meta.SourceApplicationEntityTitle == "MODALITY1"
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.PixelData == ds.PixelData


def test_unreadable_dataset_is_malformed() -> None:
    from dicomcloud.domain.part10 import parse_dataset

    with pytest.raises((errors.MalformedDicom, errors.MissingAttribute)):  # truncated: nothing usable
        parse_dataset(b"\x08\x00\x16\x00UI\xff\xff", "1.2.840.10008.1.2.1", "t")
    with pytest.raises(errors.MalformedDicom):
        parse_dataset(b"not deflate", "1.2.840.10008.1.2.1.99", "t")
