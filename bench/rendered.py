"""Rendered images and thumbnails: dicomcloud (``dicomcloud up``) vs Orthanc + DICOMweb plugin.

The same CT series (``--instances`` files of 512 x 512, 16-bit, 12 stored,
Explicit VR Little Endian, from ``tests/factory.py``) goes into each server
over one DCMTK ``storescu`` association; the servers run one after the other
on 127.0.0.1. Then, per server, at ``--concurrency`` (default 16), each
workload cycling over the instances:

- ``rendered``: ``GET …/instances/{i}/rendered`` with ``Accept: image/jpeg``;
- ``wado-uri``: ``GET /wado?requestType=WADO&…&contentType=image/jpeg``;
- ``thumbnail instance``: ``GET …/instances/{i}/thumbnail``;
- ``thumbnail series``: ``GET …/series/{se}/thumbnail``.

Every answer must be 200 ``image/jpeg`` starting with a JPEG SOI marker (the
first of each workload is decoded and its size printed). A workload a server
does not offer (Orthanc 1.10 / DICOMweb 1.7 has no ``/thumbnail``) is shown
as n/a with the status it answered. dicomcloud caches thumbnails (the read
cache): after the first request per key they are cache hits; rendered images
are not cached by either server as far as this benchmark can tell.

    .venv/bin/python bench/rendered.py [--instances 50] [--requests 400] [--servers orthanc,dicomcloud]

Prints a Markdown table with throughput, p50/p95 and the ratio dicomcloud /
Orthanc; writes ``bench/results/rendered-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO))

from _proc import dcmtk_env  # noqa: E402
from dicomcloud_proc import DicomcloudServer  # noqa: E402
from orthanc import OrthancServer  # noqa: E402
from run import pct, server_cpu_fn  # noqa: E402
from tests import factory  # noqa: E402

STORESCU = "/usr/bin/storescu"  # DCMTK's
SERVERS = {"orthanc": ("Orthanc", OrthancServer), "dicomcloud": ("dicomcloud", DicomcloudServer)}
WORKLOADS = ("rendered", "wado-uri", "thumbnail instance", "thumbnail series")


@dataclass(frozen=True)
class Instance:
    study: str
    series: str
    sop: str


def make_data(directory: Path, count: int) -> list[Instance]:
    written = factory.write_series(
        directory, count, PatientID="BENCH-RENDER", PatientName="Bench^Render", AccessionNumber="BENCHR1"
    )
    return [Instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for _, ds in written]


def store(server: Any, directory: Path) -> float:
    where = [server.host, str(server.dimse_port), str(directory)]
    t0 = time.perf_counter()
    result = subprocess.run(
        [STORESCU, "-aet", "BENCH", "-aec", server.aet, "-to", "30", "+sd", *where],
        capture_output=True,
        text=True,
        timeout=300,
        env=dcmtk_env(),
    )
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return time.perf_counter() - t0


def wait_visible(server: Any, instances: Sequence[Instance], cap: float = 120.0) -> None:
    first = instances[0]
    url = f"{server.dicomweb_url}/studies/{first.study}/series/{first.series}/instances"
    deadline = time.monotonic() + cap
    seen = 0
    while time.monotonic() < deadline:
        r = httpx.get(url, headers={"Accept": "application/dicom+json"}, timeout=30)
        seen = len(r.json()) if r.status_code == 200 and r.content.strip() else 0
        if seen >= len(instances):
            return
        time.sleep(0.2)
    raise RuntimeError(f"QIDO lists {seen}/{len(instances)} instances after {cap:.0f} s")


def urls(server: Any, workload: str, instances: Sequence[Instance]) -> list[tuple[str, dict[str, str]]]:
    base = server.dicomweb_url
    out = []
    for i in instances:
        resource = f"{base}/studies/{i.study}/series/{i.series}/instances/{i.sop}"
        if workload == "rendered":
            out.append((resource + "/rendered", {}))
        elif workload == "wado-uri":
            query = f"requestType=WADO&studyUID={i.study}&seriesUID={i.series}&objectUID={i.sop}"
            # contentType written out by hand: Orthanc 1.10 does not decode "image%2Fjpeg"
            out.append((f"{server.base_url}/wado?{query}&contentType=image/jpeg", {}))
        elif workload == "thumbnail instance":
            out.append((resource + "/thumbnail", {}))
        else:
            out.append((f"{base}/studies/{i.study}/series/{i.series}/thumbnail", {}))
    return out


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def problem_of(r: httpx.Response) -> str | None:
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {r.text[:120]!r}"
    if not r.content.startswith(b"\xff\xd8"):
        return f"not a JPEG (Content-Type {r.headers.get('content-type')})"
    return None  # a JPEG labelled otherwise is counted in "content_types", not failed


async def drive(
    targets: Sequence[tuple[str, dict[str, str]]], requests: int, concurrency: int, cap: float
) -> dict[str, Any]:
    lat: list[float] = []
    statuses: Counter[str] = Counter()
    content_types: Counter[str] = Counter()
    problems: list[str] = []
    idx = 0
    t0 = time.perf_counter()
    deadline = t0 + cap
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers={"Accept": "image/jpeg"}) as client:

        async def worker() -> None:
            nonlocal idx
            while idx < requests and time.perf_counter() < deadline:
                url, params = targets[idx % len(targets)]
                idx += 1
                s = time.perf_counter()
                try:
                    r = await client.get(url, params=params or None)
                    el = time.perf_counter() - s
                    statuses[str(r.status_code)] += 1
                    content_types[r.headers.get("content-type", "")] += 1
                    problem = problem_of(r)
                except httpx.HTTPError as exc:
                    statuses["exc"] += 1
                    problem, el = f"{type(exc).__name__}: {exc}", 0.0
                if problem is None:
                    lat.append(el)
                elif len(problems) < 3:
                    problems.append(problem)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "requests": idx,
        "ok": len(lat),
        "wall_s": round(wall, 3),
        "req_per_s": round(len(lat) / wall, 1) if wall > 0 and lat else None,
        "p50_ms": ms(pct(lat, 50)),
        "p95_ms": ms(pct(lat, 95)),
        "statuses": dict(statuses),
        "content_types": dict(content_types),
        "problems": problems,
    }


def probe(targets: Sequence[tuple[str, dict[str, str]]]) -> tuple[str | None, str]:
    """One request: (problem or None, description of the image)."""
    url, params = targets[0]
    r = httpx.get(url, params=params or None, headers={"Accept": "image/jpeg"}, timeout=60)
    problem = problem_of(r)
    if problem:
        return problem, ""
    img = Image.open(io.BytesIO(r.content))
    label = r.headers.get("content-type", "")
    mislabelled = f", labelled {label}" if label.split(";")[0].strip() != "image/jpeg" else ""
    return None, f"{img.format} {img.size[0]}x{img.size[1]} {img.mode}, {len(r.content)} B{mislabelled}"


def server_cpu(server: Any) -> float:
    """CPU seconds of the server's process trees (an embedded PostgreSQL included)."""
    cpu = server_cpu_fn(server)
    return sum(cpu().values()) if cpu else 0.0


def run_server(key: str, instances: list[Instance], data: Path, args: argparse.Namespace) -> dict[str, Any]:
    title, cls = SERVERS[key]
    result: dict[str, Any] = {"server": title}
    with cls() as server:
        result["versions"] = server.versions()
        result["store_s"] = round(store(server, data), 2)
        wait_visible(server, instances)
        print(f"{title}: {len(instances)} instances stored in {result['store_s']} s", flush=True)
        for workload in WORKLOADS:
            targets = urls(server, workload, instances)
            problem, description = probe(targets)
            if problem:
                result[workload] = {"na": problem}
                print(f"  {workload}: n/a ({problem})", flush=True)
                continue
            for target in targets[: args.warmup]:  # not timed
                httpx.get(target[0], params=target[1] or None, headers={"Accept": "image/jpeg"}, timeout=60)
            cpu0 = server_cpu(server)
            stats = asyncio.run(drive(targets, args.requests, args.concurrency, args.cap))
            cpu = server_cpu(server) - cpu0
            stats["server_cpu_s"] = round(cpu, 2)
            stats["server_cpu_ms_per_req"] = round(cpu * 1000 / stats["ok"], 2) if stats["ok"] else None
            stats["image"] = description
            result[workload] = stats
            print(
                f"  {workload}: {stats['req_per_s']} req/s, p50 {stats['p50_ms']} ms, p95 {stats['p95_ms']} ms, "
                f"server CPU {stats['server_cpu_ms_per_req']} ms/req ({stats['ok']}/{stats['requests']} ok; "
                f"{description})",
                flush=True,
            )
    return result


def table(results: list[dict[str, Any]], concurrency: int) -> str:
    by = {r["server"]: r for r in results}
    names = [r["server"] for r in results]
    head = f"| workload (c={concurrency}) | " + " | ".join(
        f"{n} req/s | {n} p50 / p95 ms | {n} CPU ms/req" for n in names
    )
    ratio = "Orthanc" in by and "dicomcloud" in by
    lines = [head + (" | dicomcloud / Orthanc req/s |" if ratio else " |")]
    lines.append("|---" * (1 + 3 * len(names) + (1 if ratio else 0)) + "|")
    for workload in WORKLOADS:
        cells = [workload]
        for n in names:
            w = by[n].get(workload, {})
            if "na" in w:
                cells += ["n/a", w["na"].split(":")[0], ""]
            else:
                cells += [
                    str(w.get("req_per_s")),
                    f"{w.get('p50_ms')} / {w.get('p95_ms')}",
                    str(w.get("server_cpu_ms_per_req")),
                ]
        if ratio:
            a, b = by["dicomcloud"].get(workload, {}), by["Orthanc"].get(workload, {})
            if a.get("req_per_s") and b.get("req_per_s"):
                cells.append(f"{a['req_per_s'] / b['req_per_s']:.2f}x")
            else:
                cells.append("n/a")
        lines.append("| " + " | ".join(cells) + " |")
    for n in names:
        for workload in WORKLOADS:
            w = by[n].get(workload, {})
            if "na" in w:
                said = " ".join(w["na"].replace("\\n", " ").replace("\\t", " ").split())
                lines.append(f"\n{n} {workload}: n/a ({said[:110]})")
            elif "labelled" in w.get("image", ""):
                lines.append(f"\n{n} {workload}: {w['image']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--requests", type=int, default=400, help="per workload and server")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4, help="untimed requests before each workload")
    parser.add_argument("--cap", type=float, default=60.0, help="seconds per workload")
    parser.add_argument("--servers", default="orthanc,dicomcloud")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-rendered-") as tmp:
        data = Path(tmp) / "data"
        instances = make_data(data, args.instances)
        results = [run_server(key.strip(), instances, data, args) for key in args.servers.split(",")]
    print()
    print(table(results, args.concurrency))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"rendered-{stamp}.json"
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
    print(f"\n(written {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
