"""End-to-end fixtures: ``dicomcloud up`` as a real subprocess on free ports.

Each archive gets a temporary ``--data-dir``. When ``DICOMCLOUD_TEST_DATABASE_URL``
names a PostgreSQL server, the archive gets a fresh database on it
(``--database-url``); otherwise it starts its own embedded server in the data
dir. Teardown sends SIGTERM and requires exit code 0 within 15 s.

Also here: small helpers the e2e tests share (sending instances over C-STORE and
STOW-RS, multipart parsing, polling QIDO, comparing DICOM JSON, reading the
warehouse tables), so that every expectation comes from pydicom and the other
projects' clients, never from our own server code.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, _config

from tests import factory
from tests.conftest import _with_database, fetch_rows, run_sync

E2E_TIMEOUT = 60.0  # seconds for a start, a stop and for indexing to catch up
STOP_TIMEOUT = 15.0
SEARCH_TIMEOUT = 30.0

DICOM = 'multipart/related; type="application/dicom"'
OCTETS = 'multipart/related; type="application/octet-stream"'
DICOM_JSON = "application/dicom+json"
IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def dicomcloud_command() -> list[str]:
    exe = Path(sys.executable).with_name("dicomcloud")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "dicomcloud"]


# --- databases --------------------------------------------------------------------


def _admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(os.environ["DICOMCLOUD_TEST_DATABASE_URL"])
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_sync(run())


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new empty database on the test server, or "" (embedded) when none is set."""
    server = os.environ.get("DICOMCLOUD_TEST_DATABASE_URL")
    if not server:
        yield ""
        return
    name = f"e2e_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server, name)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def warehouse_url(archive: Archive) -> str:
    """The archive's database, to read its warehouse tables from here. An archive that
    runs its embedded PostgreSQL cannot be reached: skipped, and failed under ``CI=true``."""
    if not archive.database_url:
        reason = "the archive runs its embedded PostgreSQL; set DICOMCLOUD_TEST_DATABASE_URL"
        if IN_CI:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return archive.database_url


def warehouse_rows(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """The rows ``sql`` selects (each a dict)."""
    return run_sync(fetch_rows(database_url, sql, *args))


def wait_for_rows(
    database_url: str,
    sql: str,
    *args: Any,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float = SEARCH_TIMEOUT,
) -> list[dict[str, Any]]:
    """Poll ``sql`` until its rows satisfy ``until`` (the loader is asynchronous) or the
    timeout passes; the last rows either way, for the caller's assertions."""
    deadline = time.monotonic() + timeout
    rows = warehouse_rows(database_url, sql, *args)
    while not until(rows) and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = warehouse_rows(database_url, sql, *args)
    return rows


# --- the archive process ----------------------------------------------------------


@dataclass
class Archive:
    """One running ``dicomcloud up``."""

    data_dir: Path
    database_url: str
    http_port: int
    dimse_port: int
    log_path: Path
    env: dict[str, str]
    ae_title: str = "DICOMCLOUD"
    args: list[str] = field(default_factory=list)  # further options of ``dicomcloud up``
    process: subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        """The default tenant's DICOMweb service."""
        return f"{self.base_url}/dicom-web"

    def tenant_url(self, tenant: str) -> str:
        return f"{self.base_url}/tenants/{tenant}/dicom-web"

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client(self, url: str | None = None) -> Any:
        from dicomweb_client.api import DICOMwebClient

        return DICOMwebClient(url=url or self.url)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30.0)

    # lifecycle

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        cmd = [
            *dicomcloud_command(),
            "up",
            "--data-dir",
            str(self.data_dir),
            "--http-host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--dimse-port",
            str(self.dimse_port),
            "--ae-title",
            self.ae_title,
        ]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        cmd += self.args
        env = {**os.environ, "DICOMCLOUD_DIMSE_HOST": "127.0.0.1", **self.env}
        with self.log_path.open("ab") as log:
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + E2E_TIMEOUT
        last = "nothing tried yet"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                pytest.fail(f"dicomcloud up exited with {code} while starting:\n{self.output()}")
            try:
                r = httpx.get(f"{self.url}/studies", timeout=2.0)
                if r.status_code in (200, 204, 401):  # 401: up, with authentication on
                    with socket.create_connection(("127.0.0.1", self.dimse_port), timeout=2.0):
                        return
                last = f"GET /dicom-web/studies answered {r.status_code}"
            except (httpx.HTTPError, OSError) as exc:
                last = repr(exc)
            time.sleep(0.2)
        self.process.kill()
        self.process.wait()
        pytest.fail(f"dicomcloud up not ready after {E2E_TIMEOUT:.0f} s ({last}); output:\n{self.output()}")

    def stop(self) -> int:
        """SIGTERM, wait up to 15 s; return the exit code (killed: -9)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = -9
        self.exit_codes.append(code)
        return code

    def stop_cleanly(self) -> None:
        code = self.stop()
        assert code == 0, (
            f"dicomcloud up exited with {code} after SIGTERM (-9: still running after "
            f"{STOP_TIMEOUT:.0f} s, killed); output:\n{self.output()[-6000:]}"
        )

    def restart(self) -> None:
        self.stop_cleanly()
        self.start()


@contextlib.contextmanager
def running_archive(
    base: Path, env: Mapping[str, str] | None = None, database_url: str | None = None, args: Sequence[str] = ()
) -> Iterator[Archive]:
    """Start an archive under ``base``; stop it (asserting exit 0) afterwards."""
    with contextlib.ExitStack() as stack:
        if database_url is None:
            database_url = stack.enter_context(fresh_database())
        base.mkdir(parents=True, exist_ok=True)
        data_dir = base / "data"
        if not database_url and os.geteuid() == 0:
            # The embedded server runs as an unprivileged user when we are root, and
            # pytest's temporary root (/tmp/pytest-of-root) is private to root.
            data_dir = Path(tempfile.mkdtemp(prefix="dicomcloud-e2e-")) / "data"
            data_dir.parent.chmod(0o755)
            stack.callback(shutil.rmtree, data_dir.parent, ignore_errors=True)
        archive = Archive(
            data_dir=data_dir,
            database_url=database_url,
            http_port=free_port(),
            dimse_port=free_port(),
            log_path=base / "dicomcloud.log",
            env=dict(env or {}),
            args=list(args),
        )
        archive.start()
        try:
            yield archive
        finally:
            archive.stop_cleanly()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """An archive shared by the tests of one module (each module uses its own patients)."""
    with running_archive(tmp_path_factory.mktemp("archive")) as running:
        yield running


@pytest.fixture
def start_archive(tmp_path: Path) -> Iterator[Callable[..., Archive]]:
    """Start archives of this test's own (``env`` adds environment variables, ``args`` options)."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> Archive:
            nonlocal count
            count += 1
            return stack.enter_context(running_archive(tmp_path / f"archive{count}", env, args=args))

        yield start


@pytest.fixture(scope="session")
def dcmtk() -> None:
    for tool in ("storescu", "echoscu"):
        if shutil.which(tool) is None:
            pytest.fail(f"DCMTK's {tool} is not installed (scripts/install-deps.sh installs it)")


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


# --- sending instances --------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """An instance as sent: its Part 10 bytes and pydicom's reading of them."""

    data: bytes
    ds: Dataset

    @property
    def study(self) -> str:
        return str(self.ds.StudyInstanceUID)

    @property
    def series(self) -> str:
        return str(self.ds.SeriesInstanceUID)

    @property
    def sop(self) -> str:
        return str(self.ds.SOPInstanceUID)

    @property
    def uids(self) -> tuple[str, str, str]:
        return self.study, self.series, self.sop

    @property
    def syntax(self) -> str:
        return str(self.ds.file_meta.TransferSyntaxUID)

    @property
    def resource(self) -> str:
        """The instance's path under a DICOMweb service root."""
        return f"/studies/{self.study}/series/{self.series}/instances/{self.sop}"

    @property
    def url_path(self) -> str:
        """The instance's path in the default tenant's service (``/dicom-web/studies/…``)."""
        return "/dicom-web" + self.resource


def as_sent(ds: Dataset) -> Sent:
    data = factory.part10_bytes(ds)
    return Sent(data, factory.read(data))


def c_store_files(archive: Archive, datasets: Sequence[Dataset], directory: Path, ae_title: str) -> list[Sent]:
    """Send the factory's files as they are (the data set bytes unchanged, pynetdicom's
    chunked sending) over one association; wait until every instance is searchable."""
    sent = [as_sent(ds) for ds in datasets]
    ae = AE(ae_title=ae_title)
    for s in sent:
        context = (s.ds.SOPClassUID, s.syntax)
        if context not in {(c.abstract_syntax, c.transfer_syntax[0]) for c in ae.requested_contexts}:
            ae.add_requested_context(*context)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    assert assoc.is_established, "association rejected"
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        for s in sent:
            path = directory / f"{s.sop}.dcm"
            path.write_bytes(s.data)
            status = assoc.send_c_store(path)
            assert status and status.Status == 0x0000, f"{s.sop} ({s.syntax}): {status}"
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    with archive.http() as http:
        wait_for_instances(http, archive.url, [s.sop for s in sent])
    return sent


def stow_body(*files: bytes, boundary: str | None = None) -> tuple[bytes, str]:
    """A STOW-RS request body (PS3.18 §10.5): ``files`` (Part 10) as the parts of a
    ``multipart/related; type="application/dicom"``; returns the body and its Content-Type."""
    boundary = boundary or uuid.uuid4().hex
    part = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(part + data + b"\r\n" for data in files) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


# --- HTTP helpers -----------------------------------------------------------------


@dataclass
class Part:
    headers: dict[str, str]
    content: bytes


def _media_params(value: str) -> dict[str, str]:
    params = {}
    for item in value.split(";")[1:]:
        key, _, val = item.strip().partition("=")
        params[key.strip().lower()] = val.strip().strip('"')
    return params


def content_type_params(value: str) -> tuple[str, dict[str, str]]:
    return value.split(";")[0].strip().lower(), _media_params(value)


def parse_multipart(response: httpx.Response) -> list[Part]:
    """Split a ``multipart/related`` body (RFC 2046 §5.1) into its parts."""
    media, params = content_type_params(response.headers["content-type"])
    assert media == "multipart/related", response.headers["content-type"]
    boundary = params["boundary"].encode()
    body = b"\r\n" + response.content
    delimiter = b"\r\n--" + boundary
    chunks = body.split(delimiter)
    parts = []
    assert chunks[-1].startswith(b"--"), "multipart body has no closing delimiter"
    for chunk in chunks[1:-1]:
        head, sep, content = chunk.partition(b"\r\n\r\n")
        assert sep, f"part without header/body separator: {chunk[:80]!r}"
        headers = {}
        for line in head.split(b"\r\n"):
            if b":" in line:
                key, _, val = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = val.strip()
        parts.append(Part(headers, content))
    return parts


def get_parts(http: httpx.Client, url: str, accept: str) -> list[Part]:
    r = http.get(url, headers={"Accept": accept})
    assert r.status_code == 200, f"GET {url} (Accept: {accept}) -> {r.status_code}: {r.text[:500]}"
    return parse_multipart(r)


def qido(http: httpx.Client, url: str, **params: Any) -> list[dict[str, Any]]:
    r = http.get(url, params=params, headers={"Accept": DICOM_JSON})
    assert r.status_code in (200, 204), f"GET {url} {params} -> {r.status_code}: {r.text[:500]}"
    if r.status_code == 204 or not r.content.strip():
        return []
    result: list[dict[str, Any]] = r.json()
    return result


def wait_for_instances(
    http: httpx.Client,
    service_url: str,
    sop_instance_uids: Iterator[str] | list[str] | set[str],
    timeout: float = SEARCH_TIMEOUT,
) -> None:
    """Poll QIDO until every instance is searchable (indexing is asynchronous)."""
    wanted = set(sop_instance_uids)
    deadline = time.monotonic() + timeout
    found: set[str] = set()
    while True:
        found = set()
        for uid in wanted:
            rows = qido(http, f"{service_url}/instances", SOPInstanceUID=uid)
            if rows:
                found.add(uid)
        if found == wanted:
            return
        if time.monotonic() > deadline:
            missing = sorted(wanted - found)
            pytest.fail(
                f"{len(missing)} of {len(wanted)} instances not searchable after {timeout:.0f} s, e.g. {missing[:3]}"
            )
        time.sleep(0.25)


def value(row: Mapping[str, Any], tag: str) -> Any:
    """The first value of a DICOM JSON attribute (PS3.18 Annex F), or None."""
    item = row.get(tag)
    if not item or not item.get("Value"):
        return None
    return item["Value"][0]


def values(row: Mapping[str, Any], tag: str) -> list[Any]:
    item = row.get(tag)
    return list(item.get("Value", [])) if item else []


def json_binary(entry: Mapping[str, Any], http: httpx.Client) -> bytes:
    """The bytes of a binary DICOM JSON attribute: inline, or fetched from its BulkDataURI."""
    if "InlineBinary" in entry:
        return base64.b64decode(entry["InlineBinary"])
    # Resolved against the archive: dicomweb-client sends "Host: 127.0.0.1" without
    # the port, so URIs in what it fetched may name port 80 (see test_dicomweb.py).
    uri = entry["BulkDataURI"]
    parts = urlsplit(uri)
    assert parts.path.startswith("/"), f"BulkDataURI {uri!r} has no absolute path"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    r = http.get(target, headers={"Accept": OCTETS + "; transfer-syntax=*"})
    assert r.status_code == 200, f"GET {uri} -> {r.status_code}: {r.text[:300]}"
    # one part; or, for encapsulated pixel data, possibly one part per frame
    return b"".join(p.content for p in parse_multipart(r))


BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
# attributes a WADO-RS metadata response may add to the stored data set
ALLOWED_EXTRA_METADATA = {
    "00020010",  # TransferSyntaxUID (viewers need it)
    "00080056",  # InstanceAvailability
    "00081190",  # RetrieveURL
    "00083002",  # AvailableTransferSyntaxUID
}


def assert_metadata_matches(
    actual: Mapping[str, Any],
    expected: Mapping[str, Any],
    http: httpx.Client,
    bulk: Mapping[str, list[bytes]] | None = None,
) -> None:
    """Compare a WADO-RS metadata object with pydicom's ``to_json_dict()``.

    Binary values may come as BulkDataURIs: those are fetched and compared
    with the expected bytes (``bulk`` lists accepted alternatives per tag,
    e.g. the frames of encapsulated pixel data).
    """
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"metadata lacks {missing}"
    extra = sorted(set(actual) - set(expected) - ALLOWED_EXTRA_METADATA)
    assert not extra, f"metadata has attributes the instance lacks: {extra}"
    for tag, exp in expected.items():
        act = actual[tag]
        assert act.get("vr") == exp.get("vr"), f"{tag}: vr {act.get('vr')} != {exp.get('vr')}"
        if "BulkDataURI" in act or "InlineBinary" in act:
            got = json_binary(act, http)
            if "InlineBinary" in exp:
                want = [base64.b64decode(exp["InlineBinary"])]
            else:
                want = [b"".join(str(v).encode() for v in exp.get("Value", []))]
            want += list((bulk or {}).get(tag, []))
            assert got in want, f"{tag}: bulk data of {len(got)} bytes differs from the value"
            continue
        if exp.get("vr") == "SQ":
            assert len(act.get("Value", [])) == len(exp.get("Value", [])), tag
            for a_item, e_item in zip(act.get("Value", []), exp.get("Value", []), strict=True):
                assert_metadata_matches(a_item, e_item, http, bulk)
            continue
        assert act.get("Value") == exp.get("Value"), f"{tag}: {act.get('Value')!r} != {exp.get('Value')!r}"


def by_tag(rows: list[dict[str, Any]], tag: str) -> dict[str, dict[str, Any]]:
    return {value(r, tag): r for r in rows}
