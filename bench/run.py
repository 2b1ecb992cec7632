"""dicomcloud (embedded and distributed) vs Orthanc + DICOMweb plugin: the same
workload, same machine, same run.

    .venv/bin/python bench/run.py [--instances 500] [--quick]
        [--servers orthanc,dicomcloud,dicomcloud-distributed]

See bench/README.md for what each row means. Only 127.0.0.1 is ever contacted;
every request loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pydicom

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from _cpu import embedded_pgdata, postmaster_pid, tree_cpu_seconds  # noqa: E402
from _proc import dcmtk_env, own_cpu_seconds, tail  # noqa: E402
from dicomcloud_distributed import DistributedDicomcloudServer  # noqa: E402
from dicomcloud_proc import DicomcloudServer  # noqa: E402
from orthanc import OrthancServer  # noqa: E402

# key -> (column title, class); the table's columns come in this order.
SERVERS: dict[str, tuple[str, Any]] = {
    "orthanc": ("Orthanc", OrthancServer),
    "dicomcloud": ("dicomcloud embedded", DicomcloudServer),
    "dicomcloud-distributed": ("dicomcloud distributed", DistributedDicomcloudServer),
}
ALIASES = {"distributed": "dicomcloud-distributed", "embedded": "dicomcloud", "dicomcloud-embedded": "dicomcloud"}

STORESCU = "/usr/bin/storescu"  # DCMTK's; .venv/bin/storescu is pynetdicom's
CLIENT_AET = "BENCH"
DICOM_JSON = "application/dicom+json"
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary='

INSTANCE_ACCEPTS = [
    'multipart/related; type="application/dicom"',
    'multipart/related; type="application/dicom"; transfer-syntax=*',
    "multipart/related; type=application/dicom",
    "multipart/related",
]
FRAME_ACCEPTS = [
    'multipart/related; type="application/octet-stream"; transfer-syntax=*',
    'multipart/related; type="application/octet-stream"',
    "multipart/related; type=application/octet-stream",
    "multipart/related",
]


# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class Inst:
    path: Path
    study: str
    series: str
    sop: str
    patient_id: str
    size: int


@dataclasses.dataclass
class Series:
    study: str
    series: str
    patient_id: str
    instances: list[Inst]


def generate_dataset(out: Path, studies: int, instances: int, rows: int, cols: int) -> str:
    """Write the data set once via the project's factory CLI (tests/factory.py)."""
    if not (REPO / "tests" / "factory.py").exists():
        raise SystemExit(
            "tests/factory.py does not exist (yet): pass --dataset DIR with "
            "pre-generated DICOM files, or wait for the factory"
        )
    cmd = [
        sys.executable,
        "-m",
        "tests.factory",
        str(out),
        "--studies",
        str(studies),
        "--series-per-study",
        "1",
        "--instances",
        str(instances),
        "--rows",
        str(rows),
        "--columns",
        str(cols),
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"factory failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return f"{' '.join(cmd[1:])}  ({time.perf_counter() - t0:.1f}s)"


# Series of their own patients/studies (the factory CLI would repeat the UIDs of the
# main data set: they derive from PatientID, AccessionNumber and StudyDate).
LATENCY_FACTORY = """
import sys
from pathlib import Path
from tests.factory import write_series
out, k, m, rows, cols = Path(sys.argv[1]), *map(int, sys.argv[2:6])
for s in range(k):
    write_series(out / f"lat{s + 1:03d}", m, PatientID=f"LAT{s + 1:04d}",
                 PatientName=f"Latency^Series{s + 1:04d}", AccessionNumber=f"LAT{s + 1:05d}",
                 StudyDate="20250101", SeriesNumber=1, rows=rows, columns=cols)
"""


def generate_latency_series(out: Path, count: int, instances: int, rows: int, cols: int) -> str:
    """`count` one-series studies of `instances` each, for the ingest-latency workloads."""
    cmd = [sys.executable, "-c", LATENCY_FACTORY, str(out), str(count), str(instances), str(rows), str(cols)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"latency series: factory failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return (
        f"tests.factory.write_series x {count} (PatientID LAT0001.., {instances} instances, "
        f"{rows}x{cols})  ({time.perf_counter() - t0:.1f}s)"
    )


def scan_dataset(root: Path) -> list[Series]:
    """Group the DICOM files under root by series (headers only)."""
    by_series: dict[tuple[str, str], Series] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
            sop = str(ds.SOPInstanceUID)
        except Exception:
            continue
        pid = str(ds.get("PatientID", ""))
        s = by_series.setdefault(key, Series(key[0], key[1], pid, []))
        s.instances.append(Inst(p, key[0], key[1], sop, pid, p.stat().st_size))
    out = sorted(by_series.values(), key=lambda s: (-len(s.instances), s.study, s.series))
    return out


# ------------------------------------------------------------------------- stats


def pct(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


class ServerDied(RuntimeError):
    pass


class Recorder:
    """Errors of one server's run, with the exact request and answer."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def add(self, workload: str, **info: Any) -> None:
        info = {"workload": workload, **info}
        self.errors.append(info)
        brief = {k: v for k, v in info.items() if k != "body"}
        body = info.get("body")
        print(f"    ! {brief}" + (f" body={body[:200]!r}" if body else ""), flush=True)


@dataclasses.dataclass
class Req:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None = None
    check: Callable[[httpx.Response], str | None] | None = None
    weight: int = 1  # e.g. instances in a STOW batch
    tag: str = ""  # query kind, for per-kind latencies
    expect: int = 0  # the status that counts as OK (e.g. 304); 0: any status < 300


CpuFn = Callable[[], dict[str, float]]


class Meter:
    """CPU seconds used by the server (every process of it, by process tree: see
    bench/_cpu.py; per component in ``server_cpu_parts``) and by this client."""

    def __init__(self, server_cpu: CpuFn | None) -> None:
        self.server_cpu = server_cpu

    def snap(self) -> tuple[dict[str, float], float]:
        return (self.server_cpu() if self.server_cpu else {}), own_cpu_seconds()

    def since(self, snap: tuple[dict[str, float], float]) -> dict[str, Any]:
        now = self.snap()
        out: dict[str, Any] = {
            "server_cpu_s": round(sum(now[0].values()) - sum(snap[0].values()), 2),
            "client_cpu_s": round(now[1] - snap[1], 2),
        }
        if len(now[0]) > 1:
            out["server_cpu_parts"] = {k: round(v - snap[0].get(k, 0.0), 2) for k, v in now[0].items()}
        return out


METER = Meter(None)


def server_cpu_fn(server: Any) -> CpuFn | None:
    """What the server's CPU is: Orthanc = its process (its SQLite index is inside);
    dicomcloud embedded = the `up` process and its PostgreSQL (postmaster and backends,
    which run in sessions of their own); distributed = every service and Kafka,
    PostgreSQL, Redis (DistributedDicomcloudServer.cpu_parts)."""
    if hasattr(server, "cpu_parts"):
        return server.cpu_parts  # type: ignore[no-any-return]
    if server.proc is None:
        return None
    pid = server.proc.pid
    if isinstance(server, DicomcloudServer):
        pgdata = embedded_pgdata(server.data_dir)
        return lambda: tree_cpu_seconds({"server": [pid], "postgresql": [postmaster_pid(pgdata)]})
    return lambda: tree_cpu_seconds({"server": [pid]})


def server_alive(server: Any) -> bool:
    if hasattr(server, "alive"):
        return bool(server.alive())
    return server.proc is not None and server.proc.alive()


def server_exit_info(server: Any) -> str:
    if hasattr(server, "exit_info"):
        return str(server.exit_info())
    return f"exited with {server.proc.proc.returncode}" if server.proc is not None else "not started"


def server_log_tail(server: Any, n: int = 60) -> str | None:
    if hasattr(server, "log_tail"):
        return str(server.log_tail(n))
    return tail(server.proc.log_path, n) if server.proc is not None else None


def storage_paths(server: Any) -> list[Path]:
    """Everything the server keeps on disk (files + index + bus)."""
    paths = list(getattr(server, "storage_paths", None) or [server.data_dir])
    if isinstance(server, DicomcloudServer):
        pg = embedded_pgdata(server.data_dir)
        if not pg.resolve().is_relative_to(server.data_dir.resolve()):
            paths.append(pg)  # the cluster went elsewhere (see dicomcloud.adapters.postgres.embedded)
    return paths


async def drive(
    client: httpx.AsyncClient,
    reqs: Sequence[Req],
    concurrency: int,
    time_cap: float,
    rec: Recorder,
    workload: str,
    max_error_samples: int = 5,
    before: Callable[[], Awaitable[Any]] | None = None,
) -> dict[str, Any]:
    """Run reqs with `concurrency` workers; no new request after time_cap seconds.

    ``before`` (awaited before each request, not timed): e.g. emptying a cache.
    """
    lat: list[float] = []
    by_tag: dict[str, list[float]] = {}
    encodings: Counter[str] = Counter()
    wire_bytes = 0
    statuses: Counter[str] = Counter()
    nbytes = 0
    ok_weight = 0
    done = 0
    err_samples = 0
    idx = 0
    cpu0 = METER.snap()
    t0 = time.perf_counter()
    deadline = t0 + time_cap

    async def worker() -> None:
        nonlocal idx, nbytes, wire_bytes, ok_weight, done, err_samples
        while idx < len(reqs) and time.perf_counter() < deadline:
            r = reqs[idx]
            idx += 1
            if before is not None:
                await before()
            s = time.perf_counter()
            problem: str | None = None
            status = "exc"
            body = b""
            el = 0.0
            try:
                resp = await client.request(r.method, r.url, headers=r.headers, content=r.content)
                body = resp.content
                el = time.perf_counter() - s  # the check below is not part of the latency
                status = str(resp.status_code)
                wire_bytes += resp.num_bytes_downloaded
                encodings[resp.headers.get("content-encoding", "identity")] += 1
                if r.expect:
                    if resp.status_code != r.expect:
                        problem = f"HTTP {resp.status_code}, expected {r.expect}"
                    elif r.check is not None:
                        problem = r.check(resp)
                elif resp.status_code >= 300:
                    problem = f"HTTP {resp.status_code}"
                elif r.check is not None:
                    problem = r.check(resp)
            except httpx.HTTPError as e:
                problem = f"{type(e).__name__}: {e}"
            done += 1
            statuses[status] += 1
            if problem is None:
                lat.append(el)
                if r.tag:
                    by_tag.setdefault(r.tag, []).append(el)
                nbytes += len(body)
                ok_weight += r.weight
            elif err_samples < max_error_samples:
                err_samples += 1
                rec.add(
                    workload,
                    request=f"{r.method} {r.url}",
                    accept=r.headers.get("Accept"),
                    status=status,
                    problem=problem,
                    body=body[:600].decode("latin-1"),
                )

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu = METER.since(cpu0)
    return {
        "requests": done,
        "planned": len(reqs),
        "ok": len(lat),
        "failed": done - len(lat),
        "concurrency": concurrency,
        "wall_s": round(wall, 3),
        "capped": done < len(reqs),
        "req_per_s": round(len(lat) / wall, 2) if wall > 0 else None,
        "units_per_s": round(ok_weight / wall, 2) if wall > 0 else None,
        "units_ok": ok_weight,
        "p50_ms": ms(pct(lat, 50)),
        "p95_ms": ms(pct(lat, 95)),
        "mean_ms": ms(sum(lat) / len(lat)) if lat else None,
        "mb_per_s": round(nbytes / wall / 1e6, 2) if wall > 0 else None,
        "statuses": dict(statuses),
        "content_encodings": dict(encodings),
        "body_bytes_ok": nbytes,
        "wire_bytes": wire_bytes,
        **cpu,
        "by_tag": {
            t: {"n": len(v), "p50_ms": ms(pct(v, 50)), "p95_ms": ms(pct(v, 95))} for t, v in sorted(by_tag.items())
        },
    }


# --------------------------------------------------------------------- workloads


def parse_json_list(resp: httpx.Response) -> list[Any]:
    if resp.status_code == 204 or not resp.content:
        return []
    data = orjson.loads(resp.content)
    if not isinstance(data, list):
        raise ValueError(f"expected a JSON array, got {type(data).__name__}")
    return data


async def count_instances(client: httpx.AsyncClient, base: str, s: Series, page: int) -> tuple[int, str | None]:
    """How many instances of the series QIDO lists now (paging with offset)."""
    total = 0
    for _ in range(100):
        url = f"{base}/studies/{s.study}/series/{s.series}/instances"
        r = await client.get(url, params={"limit": page, "offset": total}, headers={"Accept": DICOM_JSON})
        if r.status_code == 404 and total == 0:
            return 0, None
        if r.status_code >= 300:
            return total, f"GET {r.url} -> HTTP {r.status_code}: {r.text[:300]}"
        got = len(parse_json_list(r))
        total += got
        if got == 0 or total >= len(s.instances):
            break
    return total, None


async def wait_visible(
    client: httpx.AsyncClient,
    base: str,
    s: Series,
    t_first: float,
    cap: float,
    rec: Recorder,
    workload: str,
) -> float | None:
    """Seconds from the first send until QIDO lists every instance of s."""
    deadline = time.perf_counter() + cap
    last: tuple[int, str | None] = (0, None)
    while time.perf_counter() < deadline:
        try:
            last = await count_instances(client, base, s, page=1000)
        except (httpx.HTTPError, ValueError) as e:
            last = (last[0], repr(e))
        if last[0] >= len(s.instances):
            return time.perf_counter() - t_first
        await asyncio.sleep(0.05)
    rec.add(
        workload,
        problem=f"QIDO listed {last[0]}/{len(s.instances)} instances of series {s.series} after {cap:.0f}s",
        status="timeout",
        body=last[1] or "",
    )
    return None


def storescu_cmd(server: Any, files: Sequence[Path]) -> list[str]:
    return [
        STORESCU,
        "-aet",
        CLIENT_AET,
        "-aec",
        server.aet,
        "-to",
        "30",
        server.host,
        str(server.dimse_port),
        *map(str, files),
    ]


async def cstore(
    server: Any, s: Series, assocs: int, cap: float, rec: Recorder, workload: str
) -> tuple[float, float | None]:
    """Send s over `assocs` parallel storescu processes. Returns (t_first, send_seconds)."""
    files = [i.path for i in s.instances]
    chunks = [files[k::assocs] for k in range(assocs)]
    t0 = time.perf_counter()
    procs = [
        await asyncio.create_subprocess_exec(
            *storescu_cmd(server, c),
            env=dcmtk_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for c in chunks
        if c
    ]

    async def finish(p: asyncio.subprocess.Process) -> tuple[int | None, bytes]:
        try:
            out, _ = await asyncio.wait_for(p.communicate(), timeout=cap)
            return p.returncode, out
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()  # a storescu this benchmark started
            out, _ = await p.communicate()
            return None, out

    results = await asyncio.gather(*(finish(p) for p in procs))
    send = time.perf_counter() - t0
    failed = False
    for k, (rc, out) in enumerate(results):
        text = out.decode("latin-1")
        bad = [ln for ln in text.splitlines() if ln.startswith(("E:", "W:", "F:"))]
        if rc != 0 or bad:
            failed = failed or rc != 0
            rec.add(
                workload,
                request=f"storescu #{k} ({len(chunks[k])} files) -> {server.aet}@{server.host}:{server.dimse_port}",
                status=f"exit {rc}" if rc is not None else f"killed after {cap:.0f}s",
                problem="; ".join(bad[:3]) or "non-zero exit",
                body=text[-600:],
            )
    return t0, (None if failed else send)


async def cstore_series_timed(
    server: Any,
    groups: Sequence[Sequence[Series]],
    cap: float,
    rec: Recorder,
    workload: str,
    on_series_done: Callable[[Series, float], None],
) -> tuple[float, float | None]:
    """Send each group of series over one `storescu -v` association (the series of a
    group one after the other), reading its log as it comes to time every C-STORE
    response; ``on_series_done(series, t)`` runs at the Success of a series' last
    instance. Returns (t_first, send_seconds or None if a storescu failed)."""
    by_path = {str(i.path): s for g in groups for s in g for i in s.instances}
    remaining = {s.series: len(s.instances) for g in groups for s in g}
    series_of = {s.series: s for g in groups for s in g}
    t0 = time.perf_counter()

    async def one(k: int, group: Sequence[Series]) -> bool:
        files = [i.path for s in group for i in s.instances]
        argv = storescu_cmd(server, files)
        argv.insert(1, "-v")
        # The log (-v) is on stderr, unbuffered; stdout only has XMIT progress dots.
        p = await asyncio.create_subprocess_exec(
            *argv, env=dcmtk_env(), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        assert p.stderr is not None
        current: str | None = None
        bad: list[str] = []
        lines: list[str] = []
        end = time.perf_counter() + cap
        killed = False
        while True:
            try:
                raw = await asyncio.wait_for(p.stderr.readline(), timeout=max(0.1, end - time.perf_counter()))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()  # a storescu this benchmark started
                killed = True
                break
            if not raw:
                break
            now = time.perf_counter()
            ln = raw.decode("latin-1").rstrip()
            lines.append(ln)
            if ln.startswith("I: Sending file: "):
                current = ln[len("I: Sending file: ") :]
            elif "Received Store Response" in ln:
                s = by_path.get(current or "")
                if "(Success)" in ln and s is not None:
                    remaining[s.series] -= 1
                    if remaining[s.series] == 0:
                        on_series_done(series_of[s.series], now)
                else:
                    bad.append(f"{current}: {ln}")
            elif ln.startswith(("E:", "W:", "F:")):
                bad.append(ln)
        rc = await p.wait()
        if rc != 0 or bad or killed:
            rec.add(
                workload,
                request=f"storescu -v #{k} ({len(files)} files) -> {server.aet}@{server.host}:{server.dimse_port}",
                status=f"killed after {cap:.0f}s" if killed else f"exit {rc}",
                problem="; ".join(bad[:3]) or "non-zero exit",
                body="\n".join(lines[-20:]),
            )
        return rc == 0 and not killed

    oks = await asyncio.gather(*(one(k, g) for k, g in enumerate(groups) if g))
    send = time.perf_counter() - t0
    return t0, (send if all(oks) else None)


def multipart(parts: Sequence[bytes], boundary: str) -> bytes:
    b = boundary.encode()
    chunks: list[bytes] = []
    for p in parts:
        chunks += [b"--", b, b"\r\nContent-Type: application/dicom\r\n\r\n", p, b"\r\n"]
    chunks += [b"--", b, b"--\r\n"]
    return b"".join(chunks)


def stow_check(resp: httpx.Response) -> str | None:
    if resp.status_code == 202:
        return f"HTTP 202 (warning/partial): {resp.text[:300]}"
    try:
        data = resp.json()
    except ValueError:
        return None
    failed = data.get("00081198", {}).get("Value") if isinstance(data, dict) else None
    if failed:
        return f"{len(failed)} entries in FailedSOPSequence"
    return None


async def stow(
    client: httpx.AsyncClient,
    base: str,
    s: Series,
    batch: int,
    streams: int,
    cap: float,
    rec: Recorder,
    workload: str,
) -> tuple[float, dict[str, Any]]:
    boundary = "benchboundary7f3a9c"
    reqs = []
    for k in range(0, len(s.instances), batch):
        insts = s.instances[k : k + batch]
        body = multipart([i.path.read_bytes() for i in insts], boundary)
        reqs.append(
            Req(
                "POST",
                f"{base}/studies",
                {
                    "Content-Type": STOW_TYPE + boundary,
                    "Accept": DICOM_JSON,
                },
                body,
                stow_check,
                weight=len(insts),
            )
        )
    t0 = time.perf_counter()
    res = await drive(client, reqs, streams, cap, rec, workload)
    return t0, res


def body_min_check(min_bytes: int) -> Callable[[httpx.Response], str | None]:
    def check(resp: httpx.Response) -> str | None:
        if "multipart/related" not in resp.headers.get("content-type", ""):
            return f"Content-Type {resp.headers.get('content-type')!r} is not multipart/related"
        if len(resp.content) < min_bytes:
            return f"body {len(resp.content)} bytes < {min_bytes}"
        return None

    return check


def metadata_check(expected: int) -> Callable[[httpx.Response], str | None]:
    def check(resp: httpx.Response) -> str | None:
        try:
            n = len(parse_json_list(resp))
        except ValueError as e:
            return f"not DICOM JSON: {e}"
        return None if n == expected else f"{n} instances in /metadata, expected {expected}"

    return check


async def probe_accept(
    client: httpx.AsyncClient, url: str, variants: Sequence[str], rec: Recorder, workload: str
) -> tuple[str | None, list[dict[str, Any]]]:
    """First Accept variant this server answers 200 for; every probe is recorded."""
    probes = []
    chosen = None
    for a in variants:
        r = await client.get(url, headers={"Accept": a})
        probes.append(
            {
                "accept": a,
                "status": r.status_code,
                "content_type": r.headers.get("content-type"),
                "body": "" if r.status_code == 200 else r.text[:300],
            }
        )
        if r.status_code == 200 and chosen is None:
            chosen = a
            break
    if chosen is None:
        for p in probes:
            rec.add(
                workload,
                request=f"GET {url}",
                accept=p["accept"],
                status=str(p["status"]),
                problem="no Accept variant answered 200",
                body=p["body"],
            )
    elif probes[0]["accept"] != chosen:
        for p in probes[:-1]:
            rec.add(
                workload + " (probe)",
                request=f"GET {url}",
                accept=p["accept"],
                status=str(p["status"]),
                problem=f"Accept variant refused; using {chosen!r}",
                body=p["body"],
            )
    return chosen, probes


def dir_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, f))
                # Allocated bytes at most: Kafka preallocates sparse 10 MiB index files
                # per partition, whose holes take no disk.
                total += min(st.st_size, st.st_blocks * 512)
    return total


@dataclasses.dataclass
class Plan:
    n: int
    quick: bool
    stow_batch: int
    cap: float  # per-workload cap for request loops
    ingest_cap: float  # per ingest workload (send + visibility)
    qido_c1: int
    qido_c16: int
    meta_c1: int
    meta_c16: int
    retrieve: int
    frames: int
    rows: int = 512
    columns: int = 512
    identity: bool = False  # send Accept-Encoding: identity (no gzip)
    keep: bool = False
    latency_series: int = 0  # series per ingest-latency workload (0: none)
    latency_instances: int = 0  # instances per such series
    meta_cache: int = 10  # requests per /metadata cold / warm workload
    etag: int = 20  # If-None-Match requests
    poll: float = 0.05  # seconds between polls of a pending series


def meta_req(url: str, expected: int) -> Req:
    return Req("GET", url, {"Accept": DICOM_JSON}, check=metadata_check(expected))


async def run_server(
    server: Any,
    series: list[Series],
    latency: dict[str, list[Series]],
    plan: Plan,
    W: dict[str, Any],
    rec: Recorder,
) -> None:
    """Every workload against one server; results go into W as they come.

    A workload that raises is recorded and the next one runs; if the server
    process has died, the rest is skipped.
    """
    global METER
    METER = Meter(server_cpu_fn(server))
    base = server.dicomweb_url
    cs1, cs4, st1, st4 = series[0], series[1], series[2], series[3]
    frame_bytes = plan.rows * plan.columns * 2
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    headers = {"Accept-Encoding": "identity"} if plan.identity else None
    client = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(120.0), limits=limits, headers=headers)

    def say(msg: str) -> None:
        print(msg, flush=True)

    async def ingest_cstore() -> None:
        for key, s, assocs in (("cstore_1", cs1, 1), ("cstore_4", cs4, 4)):
            say(f"  {key}: {len(s.instances)} instances over {assocs} association(s)")
            cpu0 = METER.snap()
            t0, send = await cstore(server, s, assocs, plan.ingest_cap, rec, key)
            cpu = METER.since(cpu0)
            vis = await wait_visible(client, base, s, t0, plan.ingest_cap, rec, key)
            W[key] = {
                "instances": len(s.instances),
                "send_s": send,
                "visible_s": vis,
                "inst_per_s": round(len(s.instances) / send, 2) if send else None,
                "send_cpu": cpu,
                "visible_cpu": METER.since(cpu0),
            }
            say(f"    send {send and round(send, 2)}s, visible {vis and round(vis, 2)}s")
            if key == "cstore_1":
                # The first /metadata calls, right after the series became visible.
                for lvl, url in (
                    ("series", f"{base}/studies/{s.study}/series/{s.series}/metadata"),
                    ("study", f"{base}/studies/{s.study}/metadata"),
                ):
                    wl = f"metadata_{lvl}_first"
                    r = await drive(client, [meta_req(url, len(s.instances))], 1, plan.cap, rec, wl)
                    W[wl] = r
                    say(f"  {wl}: {r['p50_ms']} ms")

    async def ingest_stow() -> None:
        for key, s, streams in (("stow_1", st1, 1), ("stow_4", st4, 4)):
            say(f"  {key}: {len(s.instances)} instances, {plan.stow_batch}/request, {streams} stream(s)")
            t0, res = await stow(client, base, s, plan.stow_batch, streams, plan.ingest_cap, rec, key)
            vis = None
            cpu0 = METER.snap()
            if res["units_ok"] == len(s.instances):
                vis = await wait_visible(client, base, s, t0, plan.ingest_cap, rec, key)
            W[key] = {
                "instances": len(s.instances),
                "send_s": res["wall_s"],
                "visible_s": vis,
                "inst_per_s": res["units_per_s"] if res["failed"] == 0 else None,
                "requests": res,
                "visible_extra_cpu": METER.since(cpu0),
            }
            say(f"    send {res['wall_s']}s ({res['units_per_s']} inst/s), visible {vis and round(vis, 2)}s")

    async def storage() -> None:
        parts = {str(p): dir_bytes(p) for p in storage_paths(server)}
        W["storage_bytes"] = sum(parts.values())
        W["storage_parts"] = parts

    async def qido() -> None:
        rng = random.Random(1234)
        kinds = ("studies?PatientID", "series", "instances")
        qreqs: list[Req] = []
        for k in range(max(plan.qido_c1, plan.qido_c16)):
            s = series[k % len(series)]
            kind = k % 3
            url = (
                f"{base}/studies?PatientID={s.patient_id}",
                f"{base}/studies/{s.study}/series",
                f"{base}/studies/{s.study}/series/{s.series}/instances",
            )[kind]
            qreqs.append(Req("GET", url, {"Accept": DICOM_JSON}, tag=kinds[kind]))
        # What each kind answers (both servers must find the same things).
        sample: dict[str, Any] = {}
        for kind, r in zip(kinds, qreqs[:3], strict=True):
            resp = await client.get(r.url, headers=r.headers)
            try:
                sample[kind] = {"status": resp.status_code, "items": len(parse_json_list(resp))}
            except ValueError as e:
                sample[kind] = {"status": resp.status_code, "error": str(e)}
        W["qido_answers"] = sample
        for c, n in ((1, plan.qido_c1), (16, plan.qido_c16)):
            rr = qreqs[:]
            rng.shuffle(rr)
            r = await drive(client, rr[:n], c, plan.cap, rec, f"qido_c{c}")
            W[f"qido_c{c}"] = r
            say(
                f"  qido c{c}: p50 {r['p50_ms']} ms p95 {r['p95_ms']} ms, "
                f"{r['req_per_s']} req/s ({r['ok']}/{r['requests']} ok)"
            )

    async def metadata() -> None:
        s = cs1
        for lvl, url in (
            ("series", f"{base}/studies/{s.study}/series/{s.series}/metadata"),
            ("study", f"{base}/studies/{s.study}/metadata"),
        ):
            for c, n in ((1, plan.meta_c1), (16, plan.meta_c16)):
                reqs = [meta_req(url, len(s.instances)) for _ in range(n)]
                r = await drive(client, reqs, c, plan.cap, rec, f"metadata_{lvl}_c{c}")
                W[f"metadata_{lvl}_c{c}"] = r
                say(
                    f"  metadata {lvl} c{c}: p50 {r['p50_ms']} ms p95 {r['p95_ms']} ms, "
                    f"{r['req_per_s']} req/s ({r['ok']}/{r['requests']} ok)"
                )

    async def metadata_cache() -> None:
        """Series /metadata of study 1 (N instances): warm (repeated), cold (cache
        emptied before each request), then ETag revalidation."""
        s = cs1
        url = f"{base}/studies/{s.study}/series/{s.series}/metadata"
        n = len(s.instances)
        await drive(client, [meta_req(url, n)], 1, plan.cap, rec, "metadata_warm (priming)")
        r = await drive(client, [meta_req(url, n) for _ in range(plan.meta_cache)], 1, plan.cap, rec, "metadata_warm")
        W["metadata_warm"] = {**r, "how": "repeated requests after one priming request"}
        say(f"  metadata warm c1: p50 {r['p50_ms']} ms p95 {r['p95_ms']} ms ({r['ok']}/{r['requests']} ok)")
        flush = getattr(server, "flush_cache", None)

        async def flush_before() -> None:
            assert flush is not None
            await asyncio.to_thread(flush)

        before: Callable[[], Awaitable[None]] | None = None
        if flush is not None:
            how, before = "redis-cli FLUSHALL before each request (not timed)", flush_before
        elif server.name == "Orthanc":
            how = (
                "Orthanc has no metadata cache (StudiesMetadata/SeriesMetadata Full: "
                "read from the files every time): plain repeated requests"
            )
        else:
            how = ""
            W["metadata_cold"] = {
                "skipped": "the in-process cache of `dicomcloud up` cannot be emptied from outside; "
                "the first call after ingest (metadata_series_first) is its cold case"
            }
            say("  metadata cold: skipped (in-process cache)")
        if how:
            reqs = [meta_req(url, n) for _ in range(plan.meta_cache)]
            r = await drive(client, reqs, 1, plan.cap, rec, "metadata_cold", before=before)
            W["metadata_cold"] = {**r, "how": how}
            say(f"  metadata cold c1: p50 {r['p50_ms']} ms p95 {r['p95_ms']} ms ({r['ok']}/{r['requests']} ok)")
        # ETag revalidation: If-None-Match with the ETag of an earlier answer -> 304.
        first = await client.get(url, headers={"Accept": DICOM_JSON})
        etag = first.headers.get("etag")
        if not etag:
            W["etag_revalidation"] = {
                "etag": None,
                "status": first.status_code,
                "note": "no ETag header in the /metadata answer: nothing to revalidate",
            }
            say(f"  etag: no ETag in the answer (HTTP {first.status_code})")
            return
        reqs = [Req("GET", url, {"Accept": DICOM_JSON, "If-None-Match": etag}, expect=304) for _ in range(plan.etag)]
        r = await drive(client, reqs, 1, plan.cap, rec, "etag_revalidation")
        W["etag_revalidation"] = {**r, "etag": etag, "answers_304": r["ok"]}
        say(f"  etag revalidation: {r['ok']}/{r['requests']} answered 304, p50 {r['p50_ms']} ms")

    async def poll_ready(key: str, s: Series, t_last: float, d: dict[str, Any]) -> None:
        """Poll one series every plan.poll s from its last Success until QIDO lists all
        its instances, then until /metadata returns them all; the times go into d."""
        murl = f"{base}/studies/{s.study}/series/{s.series}/metadata"
        deadline = t_last + plan.ingest_cap
        t_q: float | None = None
        polls = 0
        last = ""
        while time.perf_counter() < deadline:
            polls += 1
            try:
                if t_q is None:
                    got, err = await count_instances(client, base, s, page=1000)
                    last = err or f"QIDO {got}/{len(s.instances)}"
                    if got >= len(s.instances):
                        t_q = time.perf_counter()
                if t_q is not None:
                    resp = await client.get(murl, headers={"Accept": DICOM_JSON})
                    got = len(parse_json_list(resp)) if resp.status_code == 200 else -1
                    last = f"/metadata HTTP {resp.status_code}, {got} instances"
                    if got == len(s.instances):
                        t_m = time.perf_counter()
                        d.update(searchable_s=round(t_q - t_last, 4), ready_s=round(t_m - t_last, 4), polls=polls)
                        return
            except (httpx.HTTPError, ValueError) as e:
                last = repr(e)[:200]
            await asyncio.sleep(plan.poll)
        d.update(polls=polls, timeout=last)
        rec.add(
            key,
            status="timeout",
            problem=f"series {s.series} not searchable + /metadata-ready {plan.ingest_cap:.0f}s "
            f"after its last Success ({last})",
        )

    async def latency_one(key: str, group_series: list[Series]) -> None:
        assocs = 4 if key.endswith("_4") else 1
        groups = [group_series[k::assocs] for k in range(assocs)]
        m = len(group_series[0].instances)
        say(f"  {key}: {len(group_series)} series x {m} instances over {assocs} association(s)")
        per: dict[str, dict[str, Any]] = {}
        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()

        def done(s: Series, t: float) -> None:
            per[s.series] = {"series": s.series, "last_success_s": round(t - t0, 3)}
            tasks.append(asyncio.create_task(poll_ready(key, s, t, per[s.series])))

        cpu0 = METER.snap()
        _, send = await cstore_series_timed(server, groups, plan.ingest_cap, rec, key, done)
        if tasks:
            await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        ready = [d["ready_s"] for d in per.values() if "ready_s" in d]
        searchable = [d["searchable_s"] for d in per.values() if "searchable_s" in d]
        complete = len(ready) == len(group_series)  # else no percentiles
        total = sum(len(s.instances) for s in group_series)
        W[key] = {
            "series": len(group_series),
            "instances_per_series": m,
            "associations": assocs,
            "send_s": send and round(send, 3),
            "inst_per_s": round(total / send, 2) if send else None,
            "series_ready": len(ready),
            "ready_p50_ms": ms(pct(ready, 50)) if complete else None,
            "ready_p95_ms": ms(pct(ready, 95)) if complete else None,
            "ready_max_ms": ms(max(ready)) if complete else None,
            "searchable_p50_ms": ms(pct(searchable, 50)) if complete else None,
            "searchable_p95_ms": ms(pct(searchable, 95)) if complete else None,
            "poll_s": plan.poll,
            "wall_s": round(wall, 3),
            "cpu": METER.since(cpu0),
            "per_series": list(per.values()),
        }
        w = W[key]
        say(
            f"    send {send and round(send, 2)}s; {len(ready)}/{len(group_series)} series ready; "
            f"last Success -> searchable+metadata p50 {w['ready_p50_ms']} ms p95 {w['ready_p95_ms']} ms "
            f"(searchable p50 {w['searchable_p50_ms']} ms)"
        )

    async def ingest_latency() -> None:
        """C-STORE of many small series; per series, from the Success of its last
        instance until QIDO lists all its instances and /metadata returns them all."""
        for key, group_series in latency.items():
            if group_series:
                await latency_one(key, group_series)

    async def retrieve() -> None:
        rng = random.Random(4321)
        all_insts = [i for s in series for i in s.instances]
        first = all_insts[0]
        iurl = f"{base}/studies/{first.study}/series/{first.series}/instances/{first.sop}"
        for key, variants, suffix, n in (
            ("retrieve_instance", INSTANCE_ACCEPTS, "", plan.retrieve),
            ("retrieve_frame", FRAME_ACCEPTS, "/frames/1", plan.frames),
        ):
            accept, probes = await probe_accept(client, iurl + suffix, variants, rec, key)
            W[key + "_accept"] = {"chosen": accept, "probes": probes}
            if accept is None:
                continue
            reqs = [
                Req(
                    "GET",
                    f"{base}/studies/{i.study}/series/{i.series}/instances/{i.sop}" + suffix,
                    {"Accept": accept},
                    check=body_min_check(frame_bytes),
                )
                for i in (rng.choice(all_insts) for _ in range(n))
            ]
            await drive(client, reqs[:8], 4, plan.cap, rec, key + " (warm-up)")
            r = await drive(client, reqs, 16, plan.cap, rec, key)
            W[key] = r
            say(
                f"  {key} c16 [{accept}]: {r['req_per_s']} /s, {r['mb_per_s']} MB/s, "
                f"p50 {r['p50_ms']} ms ({r['ok']}/{r['requests']} ok)"
            )

    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("ingest C-STORE", ingest_cstore),
        ("ingest STOW-RS", ingest_stow),
        ("storage", storage),
        ("QIDO", qido),
        ("metadata", metadata),
        ("metadata cache + ETag", metadata_cache),
        ("retrieve", retrieve),
        # Last, so that the extra studies change nothing measured before.
        ("ingest latency", ingest_latency),
    ]
    try:
        for name, step in steps:
            if not server_alive(server):
                raise ServerDied(f"{server.name}: {server_exit_info(server)} before {name}")
            try:
                await step()
            except Exception as e:
                rec.add(name, status="exception", problem=f"{type(e).__name__}: {e}")
    finally:
        await client.aclose()


# ------------------------------------------------------------------------- table

Row = tuple[str, Callable[[dict[str, Any]], float | None], str, str]


CLIENT_BOUND = 0.75  # client CPU seconds per wall second above which a row gets a dagger


def client_share(w: dict[str, Any], key: str | None) -> float | None:
    """Share of one core the benchmark client used during a concurrent workload."""
    r = w.get(key) if key else None
    if not isinstance(r, dict) or (r.get("concurrency") or 0) <= 1 or not r.get("wall_s"):
        return None
    return float(r.get("client_cpu_s", 0.0)) / float(r["wall_s"])


def g(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def get(w: dict[str, Any]) -> float | None:
        cur: Any = w
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return None
            cur = cur[p]
        return cur if isinstance(cur, int | float) and not isinstance(cur, bool) else None

    get.workload = path[0]  # type: ignore[attr-defined]
    return get


def per_inst(key: str, cpu: str) -> Callable[[dict[str, Any]], float | None]:
    def get(w: dict[str, Any]) -> float | None:
        v, n = g(key, cpu, "server_cpu_s")(w), g(key, "instances")(w)
        return round(v / n * 1000, 2) if v is not None and n and g(key, "visible_s")(w) else None

    return get


INFRA = ("postgresql", "kafka", "redis")


def infra_per_inst(key: str) -> Callable[[dict[str, Any]], float | None]:
    """The part of per_inst(key, "visible_cpu") spent in PostgreSQL, Kafka and Redis."""

    def get(w: dict[str, Any]) -> float | None:
        parts = (w.get(key) or {}).get("visible_cpu", {}).get("server_cpu_parts")
        n = g(key, "instances")(w)
        if not parts or not n or not g(key, "visible_s")(w):
            return None
        return round(float(sum(v for k, v in parts.items() if k in INFRA)) / n * 1000, 2)

    return get


def stow_cpu(key: str) -> Callable[[dict[str, Any]], float | None]:
    def get(w: dict[str, Any]) -> float | None:
        a = g(key, "requests", "server_cpu_s")(w)
        b = g(key, "visible_extra_cpu", "server_cpu_s")(w)
        n = g(key, "instances")(w)
        if a is None or b is None or not n or not g(key, "visible_s")(w):
            return None
        return round((a + b) / n * 1000, 2)

    return get


def rows(n: int, batch: int, plan: Plan | None = None) -> list[Row]:
    hi, lo = "higher", "lower"
    ins = "/studies/{s}/series/{se}/instances"
    out: list[Row] = []
    for key, what in (
        ("cstore_1", "C-STORE, 1 assoc (storescu)"),
        ("cstore_4", "C-STORE, 4 assocs (4 storescu)"),
        ("stow_1", f"STOW-RS, 1 stream ({batch}/request)"),
        ("stow_4", f"STOW-RS, 4 streams ({batch}/request)"),
    ):
        out += [
            (f"{what}: ingest of {n}", g(key, "inst_per_s"), "inst/s", hi),
            (f"{what}: first send -> all in QIDO", g(key, "visible_s"), "s", lo),
        ]
    out += [
        (
            "Server CPU per instance, C-STORE 1 assoc (until visible)",
            per_inst("cstore_1", "visible_cpu"),
            "ms",
            lo,
        ),
        (
            "  of which PostgreSQL + Kafka + Redis (C-STORE 1 assoc)",
            infra_per_inst("cstore_1"),
            "ms",
            lo,
        ),
        ("Server CPU per instance, STOW-RS 1 stream (until visible)", stow_cpu("stow_1"), "ms", lo),
        (
            "Storage used after ingest",
            lambda w: (w.get("storage_bytes") or 0) / 2**20 or None,
            "MiB",
            lo,
        ),
        ("QIDO mix c1 p50", g("qido_c1", "p50_ms"), "ms", lo),
        ("QIDO mix c1 p95", g("qido_c1", "p95_ms"), "ms", lo),
        (
            "  QIDO c1 p50: /studies?PatientID=",
            g("qido_c1", "by_tag", "studies?PatientID", "p50_ms"),
            "ms",
            lo,
        ),
        (
            "  QIDO c1 p50: /studies/{s}/series",
            g("qido_c1", "by_tag", "series", "p50_ms"),
            "ms",
            lo,
        ),
        (f"  QIDO c1 p50: {ins} ({n})", g("qido_c1", "by_tag", "instances", "p50_ms"), "ms", lo),
        ("QIDO mix c16 p50", g("qido_c16", "p50_ms"), "ms", lo),
        ("QIDO mix c16 p95", g("qido_c16", "p95_ms"), "ms", lo),
        ("QIDO mix c16 throughput", g("qido_c16", "req_per_s"), "req/s", hi),
    ]
    for lvl in ("series", "study"):
        out += [
            (
                f"{lvl} /metadata ({n} inst) first call",
                g(f"metadata_{lvl}_first", "p50_ms"),
                "ms",
                lo,
            ),
            (f"{lvl} /metadata c1 p50", g(f"metadata_{lvl}_c1", "p50_ms"), "ms", lo),
            (f"{lvl} /metadata c1 p95", g(f"metadata_{lvl}_c1", "p95_ms"), "ms", lo),
            (f"{lvl} /metadata c16 throughput", g(f"metadata_{lvl}_c16", "req_per_s"), "req/s", hi),
        ]
    out += [
        ("WADO-RS instance retrieve c16", g("retrieve_instance", "req_per_s"), "inst/s", hi),
        ("WADO-RS instance retrieve c16 p95", g("retrieve_instance", "p95_ms"), "ms", lo),
        ("WADO-RS /frames/1 c16", g("retrieve_frame", "req_per_s"), "frames/s", hi),
        ("WADO-RS /frames/1 c16 p95", g("retrieve_frame", "p95_ms"), "ms", lo),
    ]
    out += [
        (f"series /metadata ({n} inst), cache cold, c1 p50", g("metadata_cold", "p50_ms"), "ms", lo),
        (f"series /metadata ({n} inst), cache cold, c1 p95", g("metadata_cold", "p95_ms"), "ms", lo),
        (f"series /metadata ({n} inst), cache warm, c1 p50", g("metadata_warm", "p50_ms"), "ms", lo),
        (f"series /metadata ({n} inst), cache warm, c1 p95", g("metadata_warm", "p95_ms"), "ms", lo),
        ("series /metadata If-None-Match -> 304, p50", g("etag_revalidation", "p50_ms"), "ms", lo),
        (
            f"series /metadata If-None-Match: 304 answers (of {plan.etag if plan else '?'}; — = no ETag)",
            g("etag_revalidation", "answers_304"),
            "count",
            "check",
        ),
    ]
    if plan is not None and plan.latency_series:
        k, m = plan.latency_series, plan.latency_instances
        for key, assocs in (("latency_1", 1), ("latency_4", 4)):
            what = f"C-STORE {k} series x {m}, {assocs} assoc{'s' if assocs > 1 else ''}"
            out += [
                (f"{what}: last Success -> searchable + /metadata p50", g(key, "ready_p50_ms"), "ms", lo),
                (f"{what}: last Success -> searchable + /metadata p95", g(key, "ready_p95_ms"), "ms", lo),
                (f"{what}: last Success -> searchable (QIDO) p50", g(key, "searchable_p50_ms"), "ms", lo),
            ]
    return out


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def median_of(get: Callable[[dict[str, Any]], float | None], rounds: list[Any]) -> float | None:
    vals = [v for v in (get(w) for w in rounds) if v is not None]
    return statistics.median(vals) if vals else None


def max_share(rounds: list[dict[str, Any]], key: str | None) -> float | None:
    vals = [v for v in (client_share(w, key) for w in rounds) if v is not None]
    return max(vals) if vals else None


def ratio_pairs(names: Sequence[str]) -> list[tuple[str, str, str]]:
    """(numerator, denominator, column title): every dicomcloud vs Orthanc, and
    distributed vs embedded."""
    short = {"orthanc": "Orthanc", "dicomcloud": "embedded", "dicomcloud-distributed": "distributed"}
    out = [(a, "orthanc", f"{short.get(a, a)}/Orthanc") for a in names if a != "orthanc" and "orthanc" in names]
    if "dicomcloud" in names and "dicomcloud-distributed" in names:
        out.append(("dicomcloud-distributed", "dicomcloud", "distributed/embedded"))
    return out


def table(results: dict[str, Any], n: int, batch: int, plan: Plan | None = None) -> tuple[str, list[dict[str, Any]]]:
    names = [k for k in SERVERS if k in results] + [k for k in results if k not in SERVERS]
    per = {k: [r["workloads"] for r in results[k].get("rounds", [])] for k in names}
    pairs = ratio_pairs(names)
    title = {k: SERVERS[k][0] if k in SERVERS else k for k in names}
    lines = [
        "| workload | "
        + " | ".join(title[k] for k in names)
        + "".join(f" | {t}" for _, _, t in pairs)
        + " | better-is |",
        "|---|" + "---:|" * (len(names) + len(pairs)) + "---|",
    ]
    out = []
    daggers = False
    for label, get, unit, better in rows(n, batch, plan):
        vals = {k: median_of(get, per[k]) for k in names}
        key = getattr(get, "workload", None)
        shares = {k: max_share(per[k], key) for k in names}
        marks = {k: "†" if (shares[k] or 0) > CLIENT_BOUND and vals[k] is not None else "" for k in names}
        daggers = daggers or any(marks.values())
        ratios: dict[str, float | None] = {}
        for a, b, t in pairs:
            va, vb = vals[a], vals[b]
            ratios[t] = round(va / vb, 3) if better != "check" and va is not None and vb else None
        row: dict[str, Any] = {
            "workload": label,
            "unit": unit,
            "values": vals,
            **vals,  # as before: one key per server
            "ratios": ratios,
            "ratio": ratios.get("embedded/Orthanc"),
            "better_is": better,
            "client_cpu_share": shares,
        }
        out.append(row)
        cells = [f"{fmt(vals[k])}{marks[k]}" for k in names]
        cells += ["—" if ratios[t] is None else f"{ratios[t]:.2f}x" for _, _, t in pairs]
        lines.append(f"| {label} [{unit}] | " + " | ".join(cells) + f" | {better} |")
    if daggers:
        lines.append(
            f"\n† the benchmark client (Python, same 2 cores) used more than "
            f"{CLIENT_BOUND:.0%} of a core during this workload: the server may do better "
            "than this number."
        )
    return "\n".join(lines), out


# -------------------------------------------------------------------------- main


def run_one(
    name: str,
    workdir: Path,
    series: list[Series],
    latency: dict[str, list[Series]],
    plan: Plan,
    rnd: int,
    rounds: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Start one server, run every workload against it, stop it."""
    cls = SERVERS[name][1]
    print(f"\n== {name}" + (f" (round {rnd + 1}/{rounds})" if rounds > 1 else ""), flush=True)
    kwargs: dict[str, Any] = {"workdir": workdir}
    if cls is DistributedDicomcloudServer:
        kwargs.update(storescp_workers=options["storescp_workers"], consumers=options["consumers"], keep=plan.keep)
    srv = cls(**kwargs)
    rec = Recorder()
    W: dict[str, Any] = {}
    res: dict[str, Any] = {
        "round": rnd,
        "loadavg_before": os.getloadavg(),
        "workloads": W,
        "errors": rec.errors,
    }
    started = False
    try:
        t = time.perf_counter()
        srv.start()
        started = True
        res["startup_s"] = round(time.perf_counter() - t, 2)
        if getattr(srv, "startup_steps", None):
            res["startup_steps"] = srv.startup_steps
        res["versions"] = srv.versions()
        fn = server_cpu_fn(srv)  # its processes exist once it has started
        res["cpu_components"] = sorted(fn()) if fn else []
        print(
            f"  up in {res['startup_s']}s: {srv.dicomweb_url}, DIMSE {srv.aet}@{srv.host}:{srv.dimse_port}"
            + (f" {srv.startup_steps}" if getattr(srv, "startup_steps", None) else ""),
            flush=True,
        )
        t = time.perf_counter()
        asyncio.run(run_server(srv, series, latency, plan, W, rec))
        res["wall_s"] = round(time.perf_counter() - t, 1)
    except Exception as e:  # a server that fails: record and go on
        rec.add("run", status="exception", problem=f"{type(e).__name__}: {e}")
    finally:
        alive = started and server_alive(srv)
        res["alive_at_end"] = alive
        res["log_tail"] = server_log_tail(srv, 60)
        if hasattr(srv, "log_problems"):
            res["log_problems"] = srv.log_problems()
        if not alive and res["log_tail"]:
            print(f"  server: {server_exit_info(srv)}; log tail:\n{res['log_tail']}", flush=True)
        srv.stop()
        for attr in ("warnings", "exit_codes"):
            if getattr(srv, attr, None):
                res[attr] = getattr(srv, attr)
        if res.get("warnings"):
            print(f"  warnings: {res['warnings']}", flush=True)
        if not plan.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        res["loadavg_after"] = os.getloadavg()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--instances",
        type=int,
        default=None,
        help="instances per ingest workload (default 500, --quick 100)",
    )
    ap.add_argument("--quick", action="store_true", help="100 instances, fewer requests")
    ap.add_argument(
        "--servers",
        default="orthanc,dicomcloud,dicomcloud-distributed",
        help="comma list, run in this order (default orthanc,dicomcloud,dicomcloud-distributed;"
        " 'embedded' and 'distributed' are accepted too)",
    )
    ap.add_argument(
        "--storescp-workers",
        type=int,
        default=2,
        help="distributed mode: dicomcloud storescp processes sharing the DIMSE port (default 2)",
    )
    ap.add_argument("--consumers", type=int, default=2, help="distributed mode: consumer processes (default 2)")
    ap.add_argument(
        "--latency-series",
        type=int,
        default=None,
        help="series per ingest-latency workload, sent over 1 and over 4 associations (default 12, --quick 6; 0: off)",
    )
    ap.add_argument(
        "--latency-instances",
        type=int,
        default=None,
        help="instances per ingest-latency series (default 20, --quick 10)",
    )
    ap.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="use DICOM files already in DIR (>= 4 series) instead of the factory",
    )
    ap.add_argument("--stow-batch", type=int, default=50)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--columns", type=int, default=512)
    ap.add_argument("--cap", type=float, default=None, help="seconds per request workload")
    ap.add_argument(
        "--identity",
        action="store_true",
        help="send Accept-Encoding: identity (default: httpx's gzip, deflate, like a browser)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each server this many times, order alternating; the table shows medians",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = ap.parse_args(argv)

    n = args.instances or (100 if args.quick else 500)
    q = args.quick
    plan = Plan(
        n=n,
        quick=q,
        stow_batch=args.stow_batch,
        cap=args.cap or (15.0 if q else 30.0),
        ingest_cap=60.0 if q else 180.0,
        qido_c1=60 if q else 150,
        qido_c16=240 if q else 800,
        meta_c1=10 if q else 25,
        meta_c16=32 if q else 96,
        retrieve=200 if q else 600,
        frames=200 if q else 600,
        rows=args.rows,
        columns=args.columns,
        identity=args.identity,
        keep=args.keep,
        latency_series=args.latency_series if args.latency_series is not None else (6 if q else 12),
        latency_instances=args.latency_instances or (10 if q else 20),
        meta_cache=10 if q else 25,
        etag=20 if q else 50,
    )
    servers = [ALIASES.get(s.strip().lower(), s.strip().lower()) for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        ap.error(f"unknown server(s) {unknown}; known: {', '.join(SERVERS)}")
    options = {"storescp_workers": args.storescp_workers, "consumers": args.consumers}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    # Traversable (not listable) by others: as root, `dicomcloud up` then keeps its
    # embedded PostgreSQL in <data-dir>/pg (counted in the storage row, removed with the
    # temp dir) instead of /var/lib/dicomcloud/pg-<hash>.
    os.chmod(work, 0o711)
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "timestamp": stamp,
        "instances": n,
        "quick": q,
        "plan": dataclasses.asdict(plan),
        "machine": {
            "nproc": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "loadavg_start": os.getloadavg(),
        },
    }
    try:
        if args.dataset:
            data_dir, how = args.dataset, f"given: {args.dataset}"
        else:
            data_dir = work / "data"
            print(
                f"generating 4 studies x {n} instances ({args.rows}x{args.columns} 16-bit)",
                flush=True,
            )
            how = generate_dataset(data_dir, 4, n, args.rows, args.columns)
        series = scan_dataset(data_dir)
        if len(series) < 4:
            raise SystemExit(f"{data_dir} holds {len(series)} series; 4 are needed")
        series = series[:4]
        latency: dict[str, list[Series]] = {"latency_1": [], "latency_4": []}
        if plan.latency_series > 0:
            lat_dir = work / "latency"
            print(
                f"generating 2 x {plan.latency_series} series x {plan.latency_instances} instances "
                "for the ingest-latency workloads",
                flush=True,
            )
            lat_how = generate_latency_series(
                lat_dir, 2 * plan.latency_series, plan.latency_instances, args.rows, args.columns
            )
            lat = sorted(scan_dataset(lat_dir), key=lambda s: s.patient_id)
            latency = {"latency_1": lat[: plan.latency_series], "latency_4": lat[plan.latency_series :]}
        meta["dataset"] = {
            "how": how,
            "series": [
                {
                    "study": s.study,
                    "series": s.series,
                    "patient_id": s.patient_id,
                    "instances": len(s.instances),
                    "mean_bytes": sum(i.size for i in s.instances) // len(s.instances),
                }
                for s in series
            ],
        }
        if plan.latency_series > 0:
            meta["dataset"]["latency"] = {
                "how": lat_how,
                **{k: [s.series for s in v] for k, v in latency.items()},
            }
        print(
            f"dataset: {[len(s.instances) for s in series]} instances per series, "
            f"~{meta['dataset']['series'][0]['mean_bytes'] // 1024} KiB each",
            flush=True,
        )

        for rnd in range(args.rounds):
            # Alternate the order between rounds so that drift hits both servers.
            order = servers if rnd % 2 == 0 else servers[::-1]
            for name in order:
                res = run_one(name, work / f"{name}-{rnd}", series, latency, plan, rnd, args.rounds, options)
                results.setdefault(name, {"rounds": []})["rounds"].append(res)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")

    md, table_rows = table(results, n, args.stow_batch, plan)
    meta["total_s"] = round(time.perf_counter() - t_start, 1)
    print(
        f"\n## {' vs '.join(SERVERS[k][0] for k in SERVERS if k in results)} ({n} instances per ingest workload, "
        f"{meta['machine']['nproc']} cores, {meta['total_s']}s)\n"
    )
    for name, per in results.items():
        for res in per["rounds"]:
            v = res.get("versions", {})
            la = res.get("loadavg_before")
            print(
                f"- {name}"
                + (f" round {res['round'] + 1}" if args.rounds > 1 else "")
                + f": {' '.join(str(x) for x in v.values() if x)}; "
                f"load avg before {la and round(la[0], 2)}, run {res.get('wall_s')}s"
            )
    print(
        f"- client: httpx {httpx.__version__}, Accept-Encoding: "
        f"{'identity' if args.identity else 'gzip, deflate (httpx default)'}"
        + (f"; values are medians of {args.rounds} rounds" if args.rounds > 1 else "")
        + "\n"
    )
    print(
        "- server CPU: Orthanc = its process (SQLite index inside); dicomcloud embedded = `up` + its "
        "PostgreSQL; dicomcloud distributed = every service + PostgreSQL + Kafka + Redis "
        "(per component in the JSON: server_cpu_parts)\n"
    )
    if meta["machine"]["loadavg_start"][0] > 1.0:
        print(
            f"(the machine was busy: load average {meta['machine']['loadavg_start'][0]:.2f} "
            "at the start; numbers are noisier than usual)\n"
        )
    print(md)
    for name, per in results.items():
        errs = [e for res in per["rounds"] for e in res.get("errors", [])]
        if errs:
            print(f"\n{name}: {len(errs)} error record(s)")
            for e in errs[:20]:
                print(f"  - {json.dumps(e)[:600]}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{stamp}.json"
    path.write_text(json.dumps({**meta, "servers": results, "table": table_rows}, indent=2, default=str))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
