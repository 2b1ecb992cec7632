"""Tenant isolation over HTTP, endpoint by endpoint (ARCHITECTURE §6.3).

"For every endpoint, a client of tenant A asking for tenant B's study by UID
gets nothing of it (404 or 403), including via metadata, bulkdata, frames,
rendered and QIDO at every level", and "the same UIDs may exist in two
tenants without clashing".

One archive for the module. Private studies go in over STOW-RS
(dicomweb-client) to ``hosp-b``, ``hosp-a`` and the default tenant; one
instance with the *same* Study/Series/SOP Instance UIDs but another patient
name and other pixels goes to ``hosp-a``, ``hosp-c`` and the default tenant.

For each private study the table of :func:`probes` (QIDO at every level, by
query and by path; WADO-RS instances, metadata, bulk data, frames; rendered
and thumbnails at every level; WADO-URI) is first asked of the owning tenant
(every answer 200 with the study in it: the negative checks cannot pass
vacuously, and the read cache is warm with the owner's answers), then of
other tenants, where every answer must be empty (QIDO) or 404/403, must
carry nothing of the study, and must be exactly what the same request about
UIDs that were never stored gets (no existence oracle).
"""

from __future__ import annotations

import io
import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from tests import factory
from tests.e2e.conftest import (
    DICOM,
    DICOM_JSON,
    OCTETS,
    Archive,
    json_binary,
    parse_multipart,
    qido,
    stow_body,
    value,
    wait_for_instances,
)

pytestmark = pytest.mark.e2e

SIZE = 32
METADATA_TIMEOUT = 30.0
ALL_SYNTAXES = DICOM + "; transfer-syntax=*"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
TRANSCODED = DICOM + f"; transfer-syntax={RLE_LOSSLESS}"
FRAMES = OCTETS + "; transfer-syntax=*"
SEARCH_EMPTY = "search"  # QIDO naming the study: the owner finds it, anyone else finds nothing
SEARCH_ALL = "list"  # QIDO naming nothing: the owner finds the study among others, anyone else not at all
SCOPED = "scoped"  # QIDO under /studies/{s}: the owner finds it; elsewhere empty, 404 or 403
RESOURCE = "resource"  # WADO-RS, rendered, WADO-URI: the owner gets 200; elsewhere 404 or 403
FORBIDDEN_OR_MISSING = (403, 404)


def root_of(tenant: str) -> str:
    """The path before ``/dicom-web`` and ``/wado`` for ``tenant`` ("" is the default tenant)."""
    return "" if tenant == "" else f"/tenants/{tenant}"


# --- the studies ----------------------------------------------------------------------------


@dataclass
class Private:
    """A study only ``tenant`` holds: a 2-frame instance (series 1) and a single-frame one (series 2)."""

    tenant: str  # "" = the default tenant
    patient_id: str
    patient_name: str
    accession: str
    multi: Dataset
    single: Dataset
    bulk_uris: list[str] = field(default_factory=list)  # the BulkDataURIs of the owner's instance metadata

    @classmethod
    def make(cls, tenant: str, tag: str, seed: int) -> Private:
        run = uuid.uuid4().hex  # fresh UIDs on every run
        common = {
            "PatientID": f"{tag}-ONLY",
            "PatientName": f"{tag}secret^Patient",
            "AccessionNumber": f"{tag}ACCSEC",
            "StudyDescription": f"{tag} SECRET STUDY",
            "study_uid": factory.uid("iso-study", tag, run),
            "rows": SIZE,
            "columns": SIZE,
        }
        multi = factory.make_instance(
            **common,
            SeriesNumber=1,
            InstanceNumber=seed,  # the pixel values follow it: no two studies share them
            series_uid=factory.uid("iso-series", tag, run, 1),
            sop_uid=factory.uid("iso-sop", tag, run, 1),
            number_of_frames=2,
            bulk_bytes=4000,
        )
        single = factory.make_instance(
            **common,
            SeriesNumber=2,
            InstanceNumber=seed + 1,
            series_uid=factory.uid("iso-series", tag, run, 2),
            sop_uid=factory.uid("iso-sop", tag, run, 2),
        )
        return cls(tenant, common["PatientID"], common["PatientName"], common["AccessionNumber"], multi, single)

    @property
    def root(self) -> str:
        return root_of(self.tenant)

    @property
    def service(self) -> str:
        return self.root + "/dicom-web"

    @property
    def study(self) -> str:
        return str(self.multi.StudyInstanceUID)

    @property
    def series(self) -> str:
        return str(self.multi.SeriesInstanceUID)

    @property
    def sop(self) -> str:
        return str(self.multi.SOPInstanceUID)

    @property
    def series2(self) -> str:
        return str(self.single.SeriesInstanceUID)

    @property
    def sop2(self) -> str:
        return str(self.single.SOPInstanceUID)

    @property
    def uids(self) -> list[str]:
        return [self.study, self.series, self.sop, self.series2, self.sop2]

    def words(self) -> list[str]:
        """Text of the study no other tenant may ever see."""
        return [self.patient_id, self.patient_name, self.accession, str(self.multi.StudyDescription)]

    def pixel_snippets(self) -> list[bytes]:
        return [factory.frames(self.multi)[0][:256], factory.frames(self.multi)[1][:256], self.single.PixelData[:256]]

    @property
    def bulk(self) -> list[str]:
        """The BulkDataURI paths from ``/studies/`` on (what a client would rewrite)."""
        paths = [urlsplit(u).path for u in self.bulk_uris]
        return [p[p.index("/studies/") :] if "/studies/" in p else p for p in paths]

    def ghost(self) -> Private:
        """The same study shape under UIDs and names that were never stored anywhere."""
        g = Private.make(self.tenant, "G" + uuid.uuid4().hex[:5].upper(), 90)
        mapping = dict(zip(self.uids, g.uids, strict=True))
        g.bulk_uris = [_replace_all(u, mapping) for u in self.bulk_uris]
        return g


def _replace_all(text: str, mapping: dict[str, str]) -> str:
    for old, new in mapping.items():
        text = text.replace(old, new)
    return text


@dataclass
class Shared:
    """One instance with the same UIDs in several tenants, different in each."""

    study: str
    series: str
    sop: str
    versions: dict[str, Dataset]  # tenant -> what was stored there

    @classmethod
    def make(cls, tenants: list[str]) -> Shared:
        run = uuid.uuid4().hex
        study = factory.uid("iso-shared-study", run)
        series = factory.uid("iso-shared-series", run)
        sop = factory.uid("iso-shared-sop", run)
        versions = {}
        for n, tenant in enumerate(tenants):
            versions[tenant] = factory.make_instance(
                PatientID="SHARED-PID",  # the same patient key, too
                PatientName=f"Shared^Version{n}",
                StudyDescription=f"SHARED VERSION {n}",
                InstanceNumber=1 + 5 * n,  # other pixel values
                study_uid=study,
                series_uid=series,
                sop_uid=sop,
                rows=SIZE,
                columns=SIZE,
                # a window over all stored values, so that the renderings show the pixels
                RescaleIntercept="0",
                WindowCenter="2048",
                WindowWidth="4096",
            )
        return cls(study, series, sop, versions)


@dataclass
class World:
    archive: Archive
    b: Private
    a: Private
    default: Private
    shared: Shared


@pytest.fixture(scope="module")
def world(archive: Archive) -> Iterator[World]:
    b = Private.make("hosp-b", "B", 10)
    a = Private.make("hosp-a", "A", 20)
    default = Private.make("", "D", 30)
    shared = Shared.make(["hosp-a", "hosp-c", ""])

    def url(tenant: str) -> str:
        return archive.url if tenant == "" else archive.tenant_url(tenant)

    for private in (b, a, default):
        archive.client(url(private.tenant)).store_instances([private.multi, private.single])
    for tenant, ds in shared.versions.items():
        archive.client(url(tenant)).store_instances([ds])

    with archive.http() as http:
        for private in (b, a, default):
            wait_for_instances(http, archive.base_url + private.service, [private.sop, private.sop2])
        for tenant in shared.versions:
            wait_for_instances(http, url(tenant), [shared.sop])
        # the series metadata is written asynchronously: wait until it answers in its tenant
        for private in (b, a, default):
            for series in (private.series, private.series2):
                _wait_ok(http, f"{private.service}/studies/{private.study}/series/{series}/metadata")
            r = http.get(
                f"{private.service}/studies/{private.study}/series/{private.series}/instances/{private.sop}/metadata",
                headers={"Accept": DICOM_JSON},
            )
            assert r.status_code == 200, r.text[:300]
            private.bulk_uris = list(_walk_bulk(r.json()))
            assert any(p.endswith("/bulkdata/7FE00010") for p in private.bulk), private.bulk_uris
        for tenant in shared.versions:
            root = root_of(tenant) + "/dicom-web"
            _wait_ok(http, f"{root}/studies/{shared.study}/series/{shared.series}/metadata")
    yield World(archive, b, a, default, shared)


def _wait_ok(http: httpx.Client, path: str) -> None:
    deadline = time.monotonic() + METADATA_TIMEOUT
    while True:
        r = http.get(path, headers={"Accept": DICOM_JSON})
        if r.status_code == 200:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"GET {path} still answers {r.status_code} after {METADATA_TIMEOUT:.0f} s: {r.text[:300]}")
        time.sleep(0.25)


def _walk_bulk(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        if isinstance(obj.get("BulkDataURI"), str):
            yield obj["BulkDataURI"]
        for v in obj.values():
            yield from _walk_bulk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_bulk(v)


def _bulk_paths(metadata: Any, service: str) -> list[str]:
    """The BulkDataURIs of ``metadata``, each required to lie under ``service``, relative to it."""
    paths = []
    for uri in _walk_bulk(metadata):
        path = urlsplit(uri).path
        assert path.startswith(service + "/"), f"BulkDataURI {uri!r} is not under this tenant's {service}"
        paths.append(path.removeprefix(service))
    return paths


# --- the endpoint table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    name: str
    kind: str
    path: str  # under the tenant root: "/dicom-web/…" or "/wado"
    params: tuple[tuple[str, str], ...] = ()
    accept: str | None = None
    owner_status: int | None = 200  # None: a path no tenant serves (no positive control)
    if_none_match: str | None = None


def probes(t: Private) -> list[Probe]:
    """Every endpoint, addressed at study ``t`` (the same table for the owner and for the others)."""
    s, se, i, se2, i2 = t.study, t.series, t.sop, t.series2, t.sop2
    w = "/dicom-web"
    inst = f"{w}/studies/{s}/series/{se}/instances/{i}"
    inst2 = f"{w}/studies/{s}/series/{se2}/instances/{i2}"
    uri = (("requestType", "WADO"), ("studyUID", s), ("seriesUID", se), ("objectUID", i))
    uri2 = (("requestType", "WADO"), ("studyUID", s), ("seriesUID", se2), ("objectUID", i2))
    table = [
        # QIDO-RS, by query at every level
        Probe("QIDO studies by StudyInstanceUID", SEARCH_EMPTY, f"{w}/studies", (("StudyInstanceUID", s),)),
        Probe(
            "QIDO studies by StudyInstanceUID, includefield=all",
            SEARCH_EMPTY,
            f"{w}/studies",
            (("StudyInstanceUID", s), ("includefield", "all")),
        ),
        Probe("QIDO studies by PatientID", SEARCH_EMPTY, f"{w}/studies", (("PatientID", t.patient_id),)),
        Probe("QIDO studies by PatientID*", SEARCH_EMPTY, f"{w}/studies", (("PatientID", t.patient_id[:3] + "*"),)),
        Probe(
            "QIDO studies by PatientName*", SEARCH_EMPTY, f"{w}/studies", (("PatientName", t.patient_name[:6] + "*"),)
        ),
        Probe("QIDO studies by AccessionNumber", SEARCH_EMPTY, f"{w}/studies", (("AccessionNumber", t.accession),)),
        Probe("QIDO series by StudyInstanceUID", SEARCH_EMPTY, f"{w}/series", (("StudyInstanceUID", s),)),
        Probe("QIDO series by SeriesInstanceUID", SEARCH_EMPTY, f"{w}/series", (("SeriesInstanceUID", se),)),
        Probe("QIDO series by PatientID", SEARCH_EMPTY, f"{w}/series", (("PatientID", t.patient_id),)),
        Probe("QIDO instances by SOPInstanceUID", SEARCH_EMPTY, f"{w}/instances", (("SOPInstanceUID", i),)),
        Probe("QIDO instances by StudyInstanceUID", SEARCH_EMPTY, f"{w}/instances", (("StudyInstanceUID", s),)),
        Probe("QIDO instances by SeriesInstanceUID", SEARCH_EMPTY, f"{w}/instances", (("SeriesInstanceUID", se2),)),
        Probe("QIDO instances by PatientID", SEARCH_EMPTY, f"{w}/instances", (("PatientID", t.patient_id),)),
        # QIDO-RS, everything the tenant holds
        Probe("QIDO all studies", SEARCH_ALL, f"{w}/studies", (("includefield", "all"),)),
        Probe("QIDO all series", SEARCH_ALL, f"{w}/series", (("includefield", "all"),)),
        Probe("QIDO all instances", SEARCH_ALL, f"{w}/instances", (("includefield", "all"),)),
        # QIDO-RS under the study's path
        Probe("QIDO /studies/{s}/series", SCOPED, f"{w}/studies/{s}/series"),
        Probe(
            "QIDO /studies/{s}/series?SeriesInstanceUID",
            SCOPED,
            f"{w}/studies/{s}/series",
            (("SeriesInstanceUID", se),),
        ),
        Probe("QIDO /studies/{s}/instances", SCOPED, f"{w}/studies/{s}/instances"),
        Probe("QIDO /studies/{s}/series/{se}/instances", SCOPED, f"{w}/studies/{s}/series/{se}/instances"),
        # WADO-RS: instances
        Probe("WADO study", RESOURCE, f"{w}/studies/{s}", accept=ALL_SYNTAXES),
        Probe("WADO study, default Accept", RESOURCE, f"{w}/studies/{s}"),
        Probe("WADO study, transcoded", RESOURCE, f"{w}/studies/{s}", accept=TRANSCODED),
        Probe("WADO series", RESOURCE, f"{w}/studies/{s}/series/{se}", accept=ALL_SYNTAXES),
        Probe("WADO instance (multi-frame)", RESOURCE, inst, accept=ALL_SYNTAXES),
        Probe("WADO instance, single part", RESOURCE, inst, accept="application/dicom; transfer-syntax=*"),
        Probe("WADO instance, transcoded", RESOURCE, inst, accept=TRANSCODED),
        Probe("WADO instance (single-frame)", RESOURCE, inst2, accept=ALL_SYNTAXES),
        # WADO-RS: metadata
        Probe("WADO study metadata", RESOURCE, f"{w}/studies/{s}/metadata", accept=DICOM_JSON),
        Probe("WADO series metadata", RESOURCE, f"{w}/studies/{s}/series/{se}/metadata", accept=DICOM_JSON),
        Probe("WADO series metadata (series 2)", RESOURCE, f"{w}/studies/{s}/series/{se2}/metadata", accept=DICOM_JSON),
        Probe("WADO instance metadata", RESOURCE, inst + "/metadata", accept=DICOM_JSON),
        Probe("WADO instance metadata (single-frame)", RESOURCE, inst2 + "/metadata", accept=DICOM_JSON),
        # a conditional request must not tell "exists elsewhere" (304) from "not here"
        *(
            Probe(f"{name}, If-None-Match: *", RESOURCE, path, accept=DICOM_JSON, owner_status=304, if_none_match="*")
            for name, path in (
                ("WADO study metadata", f"{w}/studies/{s}/metadata"),
                ("WADO series metadata", f"{w}/studies/{s}/series/{se}/metadata"),
                ("WADO instance metadata", inst + "/metadata"),
            )
        ),
        # WADO-RS: bulk data and frames
        Probe("WADO bulkdata 7FE00010", RESOURCE, inst + "/bulkdata/7FE00010", accept=FRAMES),
        Probe(
            f"WADO bulkdata {factory.bulk_tag():08X}",
            RESOURCE,
            f"{inst}/bulkdata/{factory.bulk_tag():08X}",
            accept=FRAMES,
        ),
        Probe("WADO frames/1", RESOURCE, inst + "/frames/1", accept=FRAMES),
        Probe("WADO frames/2", RESOURCE, inst + "/frames/2", accept=FRAMES),
        Probe("WADO frames/1,2", RESOURCE, inst + "/frames/1,2", accept=FRAMES),
        Probe("WADO frames/1 (single-frame)", RESOURCE, inst2 + "/frames/1", accept=FRAMES),
        # rendered and thumbnails, every level
        Probe("rendered study", RESOURCE, f"{w}/studies/{s}/rendered"),
        Probe("rendered series", RESOURCE, f"{w}/studies/{s}/series/{se}/rendered"),
        Probe("rendered instance", RESOURCE, inst + "/rendered"),
        Probe("rendered instance, png", RESOURCE, inst + "/rendered", accept="image/png"),
        Probe("rendered instance (single-frame)", RESOURCE, inst2 + "/rendered"),
        Probe("rendered frame 2", RESOURCE, inst + "/frames/2/rendered"),
        Probe("thumbnail study", RESOURCE, f"{w}/studies/{s}/thumbnail"),
        Probe("thumbnail series", RESOURCE, f"{w}/studies/{s}/series/{se}/thumbnail"),
        Probe("thumbnail instance", RESOURCE, inst + "/thumbnail"),
        Probe("thumbnail frame 1", RESOURCE, inst + "/frames/1/thumbnail"),
        # WADO-URI
        Probe("WADO-URI (multi-frame: the file)", RESOURCE, "/wado", uri),
        Probe(
            "WADO-URI contentType=application/dicom", RESOURCE, "/wado", (*uri, ("contentType", "application/dicom"))
        ),
        Probe(
            "WADO-URI transferSyntax",
            RESOURCE,
            "/wado",
            (*uri, ("contentType", "application/dicom"), ("transferSyntax", RLE_LOSSLESS)),
        ),
        Probe("WADO-URI png frame 2", RESOURCE, "/wado", (*uri, ("contentType", "image/png"), ("frameNumber", "2"))),
        Probe("WADO-URI (single-frame: jpeg)", RESOURCE, "/wado", uri2),
        Probe(
            "WADO-URI (single-frame) application/dicom",
            RESOURCE,
            "/wado",
            (*uri2, ("contentType", "application/dicom")),
        ),
    ]
    # every BulkDataURI of the owner's metadata, under this tenant's service root
    for n, (uri, rel) in enumerate(zip(t.bulk_uris, t.bulk, strict=True)):
        table.append(Probe(f"BulkDataURI #{n} {rel.rsplit('/', 1)[-1]}", RESOURCE, w + rel, accept=FRAMES))
        # and the owner's whole URI path under this tenant's service root
        table.append(
            Probe(
                f"BulkDataURI #{n}, owner's path under this service root",
                RESOURCE,
                w + urlsplit(uri).path,
                accept=FRAMES,
                owner_status=None,
            )
        )
    return table


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: str

    def text(self) -> str:
        return self.body[:300].decode("latin-1")


def ask(http: httpx.Client, root: str, probe: Probe) -> Answer:
    headers = {"Accept": probe.accept} if probe.accept else {}
    if probe.if_none_match is not None:
        headers["If-None-Match"] = probe.if_none_match
    r = http.get(root + probe.path, params=list(probe.params), headers=headers)
    header_text = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    return Answer(r.status_code, r.headers.get("content-type", ""), r.content, header_text)


def _rows(answer: Answer) -> list[dict[str, Any]]:
    if answer.status == 204 or not answer.body.strip():
        return []
    rows: list[dict[str, Any]] = json.loads(answer.body)
    return rows


def check_owner(http: httpx.Client, t: Private) -> list[str]:
    """Every probe answers the owner with the study: the isolation checks are not vacuous."""
    failures = [
        f"[owner {t.root or '/'}] BulkDataURI {uri} is not under the tenant's {t.service}/"
        for uri in t.bulk_uris
        if not urlsplit(uri).path.startswith(t.service + "/")
    ]
    for probe in probes(t):
        if probe.owner_status is None:
            continue
        got = ask(http, t.root, probe)
        where = f"[owner {t.root or '/'}] {probe.name}: GET {t.root}{probe.path} {dict(probe.params)}"
        if got.status != probe.owner_status:
            failures.append(f"{where} -> {got.status} (want {probe.owner_status}): {got.text()}")
            continue
        if got.status == 304:
            continue
        if probe.kind in (SEARCH_EMPTY, SEARCH_ALL, SCOPED):
            rows = _rows(got)
            if not rows or t.study.encode() not in got.body:
                failures.append(f"{where} -> 200 without the study: {got.text()}")
        elif len(got.body) == 0:
            failures.append(f"{where} -> 200 with an empty body")
    return failures


def check_outsider(http: httpx.Client, root: str, t: Private, ghost: Private) -> list[str]:
    """Every probe about ``t`` asked under ``root`` gives nothing of it, exactly as for a study never stored."""
    failures = []
    secret_words = [w.encode() for w in t.words()]
    snippets = t.pixel_snippets()
    for probe, ghost_probe in zip(probes(t), probes(ghost), strict=True):
        got = ask(http, root, probe)
        request = root + probe.path + "?" + "&".join(f"{k}={v}" for k, v in probe.params)
        where = f"[{root or '/'} asks for {t.root or '/'}'s study] {probe.name}: GET {request}"
        if got.status >= 500:
            failures.append(f"{where} -> {got.status} (server error): {got.text()}")
            continue
        if probe.kind == SEARCH_EMPTY:
            if not (got.status in (200, 204) and _rows(got) == []):
                failures.append(f"{where} -> {got.status} (want 204 or []): {got.text()}")
        elif probe.kind == SEARCH_ALL:
            if got.status not in (200, 204):
                failures.append(f"{where} -> {got.status} (want 200 or 204): {got.text()}")
        elif probe.kind == SCOPED:
            empty = got.status in (200, 204) and _rows(got) == []
            if not (empty or got.status in FORBIDDEN_OR_MISSING):
                failures.append(f"{where} -> {got.status} (want empty, 404 or 403): {got.text()}")
        elif got.status not in FORBIDDEN_OR_MISSING:
            failures.append(f"{where} -> {got.status} {got.content_type} (want 404 or 403): {got.text()}")
        # nothing of the study in the answer (the UIDs the request itself names may be echoed)
        everything = got.body + b"\n" + got.headers.encode("latin-1", "replace")
        leaked = [w.decode() for w in secret_words if w in everything]
        leaked += [u for u in t.uids if u not in request and u.encode() in everything]
        leaked += [f"pixel bytes #{n}" for n, p in enumerate(snippets) if p in got.body]
        if leaked:
            failures.append(f"{where} -> {got.status}: the answer holds {leaked}: {got.text()}")
        # no existence oracle: the same as for UIDs never stored anywhere
        if probe.kind != SEARCH_ALL:
            twin = ask(http, root, ghost_probe)
            if twin.status != got.status:
                failures.append(
                    f"{where} -> {got.status}, but {twin.status} for a study that does not exist: "
                    f"{got.text()!r} vs {twin.text()!r}"
                )
    return failures


def _report(failures: list[str]) -> str:
    return f"{len(failures)} isolation failure(s):\n" + "\n".join(failures)


# --- the tests ------------------------------------------------------------------------------

OUTSIDERS = {
    # owner -> tenant roots that must see nothing of its study
    "hosp-b": [
        "/tenants/hosp-a",
        "",
        "/tenants/default",
        "/tenants/hosp-c",
        "/tenants/hosp-bb",
        "/tenants/hosp",
    ],
    "hosp-a": ["/tenants/hosp-b", "", "/tenants/hosp-c"],
    "": ["/tenants/hosp-a", "/tenants/hosp-b"],
}


@pytest.mark.parametrize("owner", ["hosp-b", "hosp-a", ""], ids=["hosp-b", "hosp-a", "default"])
def test_no_tenant_gets_anything_of_another_tenants_study(world: World, owner: str) -> None:
    t = {"hosp-b": world.b, "hosp-a": world.a, "": world.default}[owner]
    with world.archive.http() as http:
        # first the owner (not vacuous), which also warms the read cache with the owner's answers
        failures = check_owner(http, t)
        ghost = t.ghost()
        for root in OUTSIDERS[owner]:
            failures += check_outsider(http, root, t, ghost)
        # and once more, now that the outsiders' own answers may be cached as well
        failures += check_outsider(http, OUTSIDERS[owner][0], t, ghost)
    assert not failures, _report(failures)


def test_uid_list_query_returns_only_own_studies(world: World) -> None:
    """A QIDO list of Study Instance UIDs naming studies of two tenants matches only the caller's."""
    a, b = world.a, world.b
    both = f"{a.study}\\{b.study}"  # UID list matching (PS3.4 C.2.2.2.2)
    with world.archive.http() as http:
        for t, other in ((a, b), (b, a)):
            rows = qido(http, world.archive.base_url + t.service + "/studies", StudyInstanceUID=both)
            assert [value(r, "0020000D") for r in rows] == [t.study], rows
            rows = qido(http, world.archive.base_url + t.service + "/instances", SOPInstanceUID=f"{a.sop}\\{b.sop}")
            assert [value(r, "00080018") for r in rows] == [t.sop], rows
            assert other.patient_id not in str(rows)


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_same_uids_in_several_tenants_do_not_clash(world: World) -> None:
    shared = world.shared
    archive = world.archive
    thumbnails: dict[str, bytes] = {}
    renderings: dict[str, np.ndarray] = {}
    with archive.http() as http:
        for tenant, sent in shared.versions.items():
            root = root_of(tenant)
            service = root + "/dicom-web"
            base = archive.base_url + service
            name = str(sent.PatientName)
            label = tenant or "default"
            pixels = sent.PixelData

            # QIDO at every level: one match, this tenant's version, Retrieve URLs under this tenant
            studies = qido(http, f"{base}/studies", StudyInstanceUID=shared.study, includefield="all")
            assert len(studies) == 1, (label, studies)
            assert value(studies[0], "00100010") == {"Alphabetic": name}, (label, studies[0].get("00100010"))
            assert value(studies[0], "00081030") == str(sent.StudyDescription), label
            assert value(studies[0], "00201208") == 1, (label, "NumberOfStudyRelatedInstances")
            by_patient = qido(http, f"{base}/studies", PatientID="SHARED-PID", includefield="00100010")
            assert [value(r, "00100010") for r in by_patient] == [{"Alphabetic": name}], (label, by_patient)
            series = qido(http, f"{base}/studies/{shared.study}/series")
            assert [value(r, "0020000E") for r in series] == [shared.series], (label, series)
            assert value(series[0], "00201209") == 1, (label, "NumberOfSeriesRelatedInstances")
            instances = qido(http, f"{base}/instances", SOPInstanceUID=shared.sop, includefield="all")
            assert len(instances) == 1, (label, instances)
            assert value(instances[0], "00200013") == int(sent.InstanceNumber), label
            for row in (studies[0], series[0], instances[0]):
                retrieve = value(row, "00081190")  # RetrieveURL, in every row
                assert retrieve is not None and urlsplit(retrieve).path.startswith(service + "/"), (label, row)

            # the instance as stored in this tenant
            resource = f"{service}/studies/{shared.study}/series/{shared.series}/instances/{shared.sop}"
            r = http.get(resource, headers={"Accept": ALL_SYNTAXES})
            assert r.status_code == 200, (label, r.status_code, r.text[:300])
            parts = parse_multipart(r)
            assert len(parts) == 1, label
            got = pydicom.dcmread(io.BytesIO(parts[0].content))
            assert str(got.PatientName) == name, label
            assert got.PixelData == pixels, f"{label}: the pixel data of another tenant's instance"

            # metadata at every level: this tenant's version only, BulkDataURIs under this tenant
            for level in (
                f"{service}/studies/{shared.study}/metadata",
                f"{service}/studies/{shared.study}/series/{shared.series}/metadata",
                resource + "/metadata",
            ):
                r = http.get(level, headers={"Accept": DICOM_JSON})
                assert r.status_code == 200, (label, level, r.status_code, r.text[:300])
                objects = r.json()
                assert len(objects) == 1, (label, level, len(objects))
                assert value(objects[0], "00100010") == {"Alphabetic": name}, (label, level)
                _bulk_paths(objects, service)
                assert json_binary(objects[0]["7FE00010"], http) == pixels, (label, level, "bulk data")

            # frames, rendered, thumbnail, WADO-URI
            r = http.get(resource + "/frames/1", headers={"Accept": FRAMES})
            assert r.status_code == 200, (label, r.text[:300])
            assert [p.content for p in parse_multipart(r)] == [pixels], f"{label}: frame 1 of another tenant"
            r = http.get(resource + "/rendered", headers={"Accept": "image/png"})
            assert r.status_code == 200, (label, r.text[:300])
            renderings[label] = _png(r.content)
            r = http.get(f"{service}/studies/{shared.study}/thumbnail", headers={"Accept": "image/png"})
            assert r.status_code == 200, (label, r.text[:300])
            thumbnails[label] = r.content
            params = {
                "requestType": "WADO",
                "studyUID": shared.study,
                "seriesUID": shared.series,
                "objectUID": shared.sop,
                "contentType": "application/dicom",
            }
            r = http.get(root + "/wado", params=params)
            assert r.status_code == 200, (label, r.text[:300])
            got = pydicom.dcmread(io.BytesIO(r.content))
            assert str(got.PatientName) == name and got.PixelData == pixels, f"{label}: WADO-URI gave another tenant's"

    labels = list(renderings)
    for i, first in enumerate(labels):
        for second in labels[i + 1 :]:
            assert not np.array_equal(renderings[first], renderings[second]), f"{first} and {second} render the same"
            assert thumbnails[first] != thumbnails[second], f"{first} and {second} share a thumbnail"

    # one file per tenant, each in its tenant's directory, each that tenant's version
    files = sorted(archive.data_dir.rglob(f"{shared.sop}.dcm"))
    assert len(files) == len(shared.versions), files
    for tenant, sent in shared.versions.items():
        directory = tenant or "default"
        mine = [f for f in files if directory in f.relative_to(archive.data_dir).parts]
        assert len(mine) == 1, (directory, files)
        assert str(pydicom.dcmread(mine[0]).PatientName) == str(sent.PatientName), mine[0]


# --- tenant values that are not valid ----------------------------------------------------------


def raw(
    archive: Archive, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """A request with ``path`` sent exactly as given (httpx would resolve dot segments)."""
    conn = HTTPConnection("127.0.0.1", archive.http_port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def raw_request_line(archive: Archive, target: bytes) -> int | None:
    """The status of ``GET <target> HTTP/1.1`` sent byte for byte (None: closed without an answer)."""
    with socket.create_connection(("127.0.0.1", archive.http_port), timeout=30) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return int(match.group(1)) if match else None


ESCAPE = "isoescape" + uuid.uuid4().hex[:8]


def bad_tenants(b: Private) -> list[str]:
    """Tenant path segments that are not TenantIDs (each as sent, percent-encoded)."""
    return [
        "..%2f..%2fetc",
        "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "..",
        ".",
        "...",
        "%2e%2e",
        "%2E%2E%2F" + ESCAPE,
        "..%2fhosp-b",
        "..%5chosp-b",
        "hosp-a%2f..%2fhosp-b",
        "hosp-a%2F..%2F..%2Fhosp-b",
        "hosp-b%2f",
        "hosp-b%00",
        "hosp-b%0a",
        "hosp-b%0d%0aX-Injected:%201",
        "hosp-b%20",
        "%20hosp-b",
        "a%20b",
        "hosp-b.",
        "hosp-b..",
        "hosp.b",
        "hosp-b;x=1",
        "hosp-b%3bx",
        "-hosp-b",
        "_hosp-b",
        "h%C3%B6sp-b",
        "%EF%BC%A8osp-b",  # a full-width H
        "%ff%fe",
        "x" * 64,
        "x" * 5000,
        "hosp-b" + "x" * 200,
        "~",
        "*",
        "%25",
        "%252e%252e",
    ]


def test_invalid_tenants_get_4xx(world: World) -> None:
    archive, b = world.archive, world.b
    inst = f"studies/{b.study}/series/{b.series}/instances/{b.sop}"
    uri = f"requestType=WADO&studyUID={b.study}&seriesUID={b.series}&objectUID={b.sop}"
    failures = []
    for tenant in bad_tenants(b):
        for tail in (
            "dicom-web/studies",
            f"dicom-web/studies?PatientID={b.patient_id}",
            f"dicom-web/studies/{b.study}/metadata",
            f"dicom-web/{inst}",
            f"dicom-web/{inst}/frames/1",
            f"dicom-web/{inst}/rendered",
            f"dicom-web/studies/{b.study}/thumbnail",
            f"wado?{uri}",
        ):
            path = f"/tenants/{tenant}/{tail}"
            status, body = raw(archive, "GET", path, headers={"Accept": "*/*"})
            if not 400 <= status < 500:
                failures.append(f"GET {path[:160]} -> {status} (want 4xx): {body[:200]!r}")
            leaked = [w for w in (*b.words(), b.series, b.sop) if w.encode() in body and w not in path]
            if leaked:
                failures.append(f"GET {path[:160]} -> {status}: the answer holds {leaked}")

    # characters no client may put in a request target, sent as they are
    for target in (b"/tenants/a b/dicom-web/studies", b"/tenants/hosp-b\t/dicom-web/studies"):
        status = raw_request_line(archive, target)
        if status is None or not 400 <= status < 500:
            failures.append(f"GET {target!r} -> {status} (want 4xx)")

    # STOW-RS to a tenant that is not one: 4xx, and no file written anywhere
    ds = factory.make_instance(PatientID="ESCAPE-PID", study_uid=factory.uid("iso-escape", ESCAPE), rows=8, columns=8)
    body, ctype = stow_body(factory.part10_bytes(ds), boundary="isoboundary" + uuid.uuid4().hex)
    for tenant in (
        f"..%2f..%2f{ESCAPE}",
        f"..%2F..%2F..%2F{ESCAPE}",
        f"{ESCAPE}%2f..%2f..%2f..%2f{ESCAPE}",
        "..",
        f"%2e%2e%2f{ESCAPE}",
        f"{ESCAPE}%00",
        "x" * 64,
    ):
        path = f"/tenants/{tenant}/dicom-web/studies"
        status, answer = raw(archive, "POST", path, body=body, headers={"Content-Type": ctype, "Accept": DICOM_JSON})
        if not 400 <= status < 500:
            failures.append(f"POST {path[:160]} -> {status} (want 4xx): {answer[:200]!r}")

    # still serving; the instance sent to invalid tenants written nowhere, nothing escaped
    with archive.http() as http:
        assert http.get("/dicom-web/studies").status_code in (200, 204)
        assert qido(http, f"{archive.base_url}/dicom-web/instances", PatientID="ESCAPE-PID") == []
    failures += [
        f"an instance sent to an invalid tenant was written: {p}"
        for p in archive.data_dir.parent.rglob(f"{ds.SOPInstanceUID}*")
    ]
    for place in (
        archive.data_dir,
        archive.data_dir.parent,
        archive.data_dir.parent.parent,
        Path("/etc"),
        Path("/tmp"),
    ):
        failures += [f"written outside the tenants' directories: {p}" for p in place.glob(f"{ESCAPE}*")]
    files_root = archive.data_dir / "files"
    assert files_root.is_dir(), f"no {files_root}: the tenant-directory check below would pass vacuously"
    tenant_re = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # TenantIDs are lower case
    for entry in files_root.iterdir():
        if not tenant_re.fullmatch(entry.name):
            failures.append(f"a tenant directory that is no TenantID: {entry}")
    assert not failures, _report(failures)
