"""DIMSE admission (domain/tenancy.py): the tenants file, its errors, and who is admitted where."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomcloud.domain.tenancy import DimseAdmission, DimseTenant, parse_tenants
from dicomcloud.entrypoints.cli import main
from dicomcloud.errors import Forbidden
from dicomcloud.settings import load

TENANTS = """
[tenants.hosp-a]
called_ae_titles = ["HOSPA", " HOSPA2 "]
calling_ae_titles = ["CT1", "MR2"]

[tenants.hosp-b]
called_ae_titles = ["HOSPB"]
source_networks = ["10.99.0.0/16", "fd00::/8"]

[tenants.hosp-c]
called_ae_titles = ["HOSPC"]
calling_ae_titles = ["CT1"]
source_networks = ["192.168.7.0/24"]
"""


@pytest.fixture
def admission() -> DimseAdmission:
    return DimseAdmission.build(
        default_tenant="default",
        ae_tenants={"TENANTX": "x"},
        allowed_calling_aes=("MODALITY", "CT1"),
        tenants=parse_tenants(TENANTS, "tenants.toml"),
    )


def test_the_file_is_parsed() -> None:
    a, b, c = parse_tenants(TENANTS, "tenants.toml")
    assert a == DimseTenant("hosp-a", frozenset({"HOSPA", "HOSPA2"}), frozenset({"CT1", "MR2"}), ())
    assert (b.tenant_id, b.calling_ae_titles) == ("hosp-b", frozenset())
    assert [str(n) for n in b.source_networks] == ["10.99.0.0/16", "fd00::/8"]
    assert (c.calling_ae_titles, [str(n) for n in c.source_networks]) == (frozenset({"CT1"}), ["192.168.7.0/24"])
    assert parse_tenants("", "empty.toml") == ()


@pytest.mark.parametrize(
    ("called", "calling", "address", "tenant"),
    [
        ("HOSPA", "CT1", "127.0.0.1", "hosp-a"),
        ("HOSPA2", "MR2", "10.0.0.1", "hosp-a"),
        ("HOSPA ", " CT1", "127.0.0.1", "hosp-a"),  # spaces are not significant (PS3.5 AE)
        ("HOSPB", "ANYONE", "10.99.3.4", "hosp-b"),
        ("HOSPB", "ANYONE", "::ffff:10.99.3.4", "hosp-b"),  # an IPv4 peer on a dual-stack listener
        ("HOSPB", "ANYONE", "fd00::7", "hosp-b"),
        ("HOSPC", "CT1", "192.168.7.200", "hosp-c"),
        ("TENANTX", "MODALITY", "127.0.0.1", "x"),  # the AE tenant map, with the global list
        ("DICOMCLOUD", "CT1", "127.0.0.1", "default"),  # not listed: default tenant, global list
        ("UNKNOWN", "MODALITY", "203.0.113.9", "default"),
    ],
)
def test_admitted(admission: DimseAdmission, called: str, calling: str, address: str, tenant: str) -> None:
    assert admission.admit(called, calling, address) == tenant


@pytest.mark.parametrize(
    ("called", "calling", "address", "words"),
    [
        ("HOSPA", "OTHER", "127.0.0.1", ["calling AE title 'OTHER'", "called AE title 'HOSPA'"]),
        ("HOSPA", "ct1", "127.0.0.1", ["'ct1'"]),  # AE titles are case-sensitive
        ("HOSPB", "CT1", "127.0.0.1", ["'CT1' from 127.0.0.1", "source networks", "'HOSPB'"]),
        ("HOSPB", "CT1", "", ["an unknown address"]),
        ("HOSPB", "CT1", "not-an-address", ["not-an-address"]),
        ("HOSPC", "CT1", "192.168.8.1", ["192.168.8.1"]),
        ("HOSPC", "MR2", "192.168.7.1", ["'MR2'"]),
        ("TENANTX", "OTHER", "127.0.0.1", ["'OTHER'", "'TENANTX'"]),
        ("DICOMCLOUD", "OTHER", "127.0.0.1", ["'OTHER'", "'DICOMCLOUD'"]),
    ],
)
def test_refused(admission: DimseAdmission, called: str, calling: str, address: str, words: list[str]) -> None:
    with pytest.raises(Forbidden) as caught:
        admission.admit(called, calling, address)
    for word in words:
        assert word in caught.value.reason


def test_empty_global_list_admits_anyone_to_unlisted_titles() -> None:
    admission = DimseAdmission.build(default_tenant="default")
    assert admission.admit("WHATEVER", "ANYONE", "198.51.100.1") == "default"
    assert admission.tenant_for(" WHATEVER ") == "default"


def test_a_called_ae_title_belongs_to_one_tenant() -> None:
    twice = parse_tenants('[tenants.a]\ncalled_ae_titles = ["X"]\n[tenants.b]\ncalled_ae_titles = ["X"]\n', "f")
    with pytest.raises(ValueError, match="'X' belongs to both tenant 'a' and tenant 'b'"):
        DimseAdmission.build(default_tenant="default", tenants=twice)
    one = parse_tenants('[tenants.a]\ncalled_ae_titles = ["X"]\n', "f")
    with pytest.raises(ValueError, match="'X' maps to tenant 'z' in the AE tenant map"):
        DimseAdmission.build(default_tenant="default", ae_tenants={"X": "z"}, tenants=one)
    same = DimseAdmission.build(default_tenant="default", ae_tenants={"X": "a"}, allowed_calling_aes=["G"], tenants=one)
    assert same.admit("X", "NOT-G", "127.0.0.1") == "a"  # the file's rule (any calling AE) wins


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[tenants.a\ncalled_ae_titles = []", ["not valid TOML"]),
        ('tenant = "a"', ["unknown top-level key(s) 'tenant'"]),
        ('tenants = "a"', ["'tenants' must be a table"]),
        ('[tenants."../x"]\ncalled_ae_titles = ["A"]', ["[tenants.../x]", "TenantID '../x' is not valid"]),
        ("[tenants.a]\n", ["[tenants.a] called_ae_titles: required"]),
        ("[tenants.a]\ncalled_ae_titles = []", ["[tenants.a]: called_ae_titles must list at least one"]),
        ('[tenants.a]\ncalled_ae_titles = "A"', ["[tenants.a] called_ae_titles: must be a list of strings"]),
        ("[tenants.a]\ncalled_ae_titles = [1]", ["called_ae_titles: must be a list of strings"]),
        ('[tenants.a]\ncalled_ae_titles = ["ABCDEFGHIJKLMNOPQ"]', ["called_ae_titles[0]", "1 to 16 characters"]),
        ('[tenants.a]\ncalled_ae_titles = ["   "]', ["called_ae_titles[0]", "1 to 16 characters"]),
        ('[tenants.a]\ncalled_ae_titles = ["A\\\\B"]', ["called_ae_titles[0]", "backslash"]),
        ('[tenants.a]\ncalled_ae_titles = ["A"]\ncalling_ae_titles = ["OK", ""]', ["calling_ae_titles[1]"]),
        ('[tenants.a]\ncalled_ae_titles = ["A"]\ncalling_ae_title = ["CT1"]', ["unknown key(s) 'calling_ae_title'"]),
        ('[tenants.a]\ncalled_ae_titles = ["A"]\nsource_networks = ["10.0.0.300/8"]', ["source_networks[0]"]),
        ('[tenants.a]\ncalled_ae_titles = ["A"]\nsource_networks = ["10.1.2.3/16"]', ["has host bits set"]),
        ('[tenants.a]\ncalled_ae_titles = ["A"]\nsource_networks = "10.0.0.0/8"', ["must be a list of strings"]),
        ('[tenants]\na = 1', ["[tenants.a]: must be a table"]),
    ],
)
def test_a_bad_file_names_the_file_and_the_entry(text: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as caught:
        parse_tenants(text, "DIMSE tenants file /etc/t.toml")
    message = str(caught.value)
    assert message.startswith("DIMSE tenants file /etc/t.toml: "), message
    for word in words:
        assert word in message, message


def test_settings_read_the_file_once(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS)
    settings = load(env={"DICOMCLOUD_DIMSE_TENANTS_FILE": str(path), "DICOMCLOUD_ALLOWED_CALLING_AES": "MODALITY"})
    path.unlink()  # read at load, not later
    assert settings.dimse_admission.admit("HOSPA", "CT1", "127.0.0.1") == "hosp-a"
    with pytest.raises(Forbidden):
        settings.dimse_admission.admit("DICOMCLOUD", "CT1", "127.0.0.1")  # the global list
    assert settings.dimse_max_pdu_bytes == 16 * 1024 * 1024


def test_settings_refuse_a_bad_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ValueError, match=f"DIMSE tenants file {missing}: cannot be read"):
        load(env={"DICOMCLOUD_DIMSE_TENANTS_FILE": str(missing)})
    bad = tmp_path / "bad.toml"
    bad.write_text('[tenants.a]\ncalled_ae_titles = ["A"]\nsource_networks = ["10.0.0.0/33"]\n')
    with pytest.raises(ValueError, match=rf"DIMSE tenants file {bad}: \[tenants.a\] source_networks\[0\]"):
        load(env={"DICOMCLOUD_DIMSE_TENANTS_FILE": str(bad)})
    bad.write_text('[tenants.a]\ncalled_ae_titles = ["A"]\n')
    with pytest.raises(ValueError, match="'A' maps to tenant 'b' in the AE tenant map"):
        load(env={"DICOMCLOUD_DIMSE_TENANTS_FILE": str(bad), "DICOMCLOUD_AE_TENANTS": "A=b"})


@pytest.mark.parametrize("size", ["-1", "100", str(2**32)])
def test_settings_refuse_a_bad_maximum_pdu_length(size: str) -> None:
    with pytest.raises(ValueError, match="maximum DIMSE PDU length"):
        load(env={"DICOMCLOUD_DIMSE_MAX_PDU_BYTES": size})
    assert load(env={"DICOMCLOUD_DIMSE_MAX_PDU_BYTES": "0"}).dimse_max_pdu_bytes == 0


def test_the_command_stops_on_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[tenants.a]\ncalled_ae_titles = ['A']\ncalling_ae_titles = ['WAY-TOO-LONG-AE-TITLE']\n")
    monkeypatch.setenv("DICOMCLOUD_DIMSE_TENANTS_FILE", str(bad))
    assert main(["storescp", "--data-dir", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert f"DIMSE tenants file {bad}: [tenants.a] calling_ae_titles[0]" in err
    assert not (tmp_path / "data").exists()
