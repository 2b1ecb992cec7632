"""Frame retrieve from the frame index: frame 1 vs frame 1,000 vs the last, cold and warm.

A benchmark, not a test. Writes four instances to a temp dir (tests/factory.py):
a single-frame and a many-frame native one (Explicit VR Little Endian, 16-bit),
a single-frame and a many-frame JPEG-LS Lossless one, all ``--size`` square.
Then times ``read_frames(path, [n])`` for frame 1, 1,000 and the last:

- **cold**: a fresh index cache, so the call parses the header and builds the
  index (median of ``--cold-runs``; the file's pages are in the page cache);
- **cold, no pages**: as cold, after ``posix_fadvise(DONTNEED)`` dropped the
  file's pages (Linux; clean pages only, so the file is fsync'ed first);
- **warm p50 / p95**: the index cached, ``--repeats`` calls;
- **per-call index p50**: a cache that keeps nothing, so every call parses the
  header and walks the items — the work every call did before the index.

``--http`` also starts ``dicomcloud up`` (bench/dicomcloud_proc.py), STOWs the
four files and times ``GET …/frames/{n}`` (first request, then p50 of
``--http-repeats``) with ``Accept: multipart/related;
type="application/octet-stream"; transfer-syntax=*``.

    .venv/bin/python bench/frames.py
    .venv/bin/python bench/frames.py --frames 2000 --encapsulated-frames 1000 --size 256 --http
    .venv/bin/python bench/frames.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless  # noqa: E402
from tests.factory import make_instance  # noqa: E402

from dicomcloud.domain.frame_index_cache import FrameIndexCache  # noqa: E402
from dicomcloud.domain.frames import read_frames  # noqa: E402

FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@dataclass
class Instance:
    name: str
    path: Path
    frames: int
    study: str
    series: str
    sop: str


@dataclass
class Row:
    instance: Instance
    frame: int
    frame_bytes: int
    cold: float
    cold_no_pages: float | None
    warm_p50: float
    warm_p95: float
    per_call: float


def write_instance(directory: Path, name: str, frames: int, size: int, syntax: str, number: int) -> Instance:
    started = time.perf_counter()
    ds: Dataset = make_instance(
        rows=size, columns=size, number_of_frames=frames, transfer_syntax=syntax, InstanceNumber=number
    )
    path = directory / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    print(
        f"  {name}: {frames} frame(s), {path.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return Instance(name, path, frames, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def drop_pages(path: Path) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(inst: Instance, frame: int, repeats: int, cold_runs: int) -> Row:
    size = len(read_frames(inst.path, [frame], cache=FrameIndexCache()).frames[0])
    cold = statistics.median(
        timed(lambda: read_frames(inst.path, [frame], cache=FrameIndexCache())) for _ in range(cold_runs)
    )
    no_pages: list[float] = []
    for _ in range(cold_runs):
        if not drop_pages(inst.path):
            break
        no_pages.append(timed(lambda: read_frames(inst.path, [frame], cache=FrameIndexCache())))
    warm_cache = FrameIndexCache()
    read_frames(inst.path, [frame], cache=warm_cache)
    warm = [timed(lambda: read_frames(inst.path, [frame], cache=warm_cache)) for _ in range(repeats)]
    assert warm_cache.builds == 1
    nothing = FrameIndexCache(max_entries=0)
    per_call = [timed(lambda: read_frames(inst.path, [frame], cache=nothing)) for _ in range(max(10, repeats // 4))]
    return Row(
        inst,
        frame,
        size,
        cold,
        statistics.median(no_pages) if no_pages else None,
        pct(warm, 50),
        pct(warm, 95),
        pct(per_call, 50),
    )


def wanted_frames(count: int) -> list[int]:
    return sorted({n for n in (1, 1000, count) if n <= count})


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.3f}"


def print_table(rows: list[Row]) -> None:
    print()
    print("### read_frames(path, [n]) — in process, ms")
    print()
    print(
        "| instance | frames | MiB | frame | frame bytes | cold (index build) | cold, no pages | warm p50 "
        "| warm p95 | per-call index p50 | warm / frame 1 | warm / single-frame |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    first: dict[str, float] = {}
    single: dict[str, float] = {}
    for row in rows:
        kind = row.instance.name.split("-")[0]
        if row.frame == 1:
            first[row.instance.name] = row.warm_p50
            if row.instance.frames == 1:
                single[kind] = row.warm_p50
        vs_first = row.warm_p50 / first[row.instance.name]
        vs_single = row.warm_p50 / single[kind] if kind in single else float("nan")
        mib = row.instance.path.stat().st_size / 2**20
        print(
            f"| {row.instance.name} | {row.instance.frames} | {mib:.1f} | {row.frame} | {row.frame_bytes} "
            f"| {ms(row.cold)} | {ms(row.cold_no_pages)} | {ms(row.warm_p50)} | {ms(row.warm_p95)} "
            f"| {ms(row.per_call)} | {vs_first:.2f} | {vs_single:.2f} |"
        )


def http(instances: list[Instance], repeats: int) -> None:
    import httpx
    from dicomcloud_proc import DicomcloudServer

    print("\nstarting dicomcloud up …", flush=True)
    with DicomcloudServer() as server, httpx.Client(timeout=600) as client:
        base = server.dicomweb_url
        boundary = "benchframes5d1e"
        for inst in instances:
            body = b"".join(
                [
                    f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                    inst.path.read_bytes(),
                    f"\r\n--{boundary}--\r\n".encode(),
                ]
            )
            started = time.perf_counter()
            resp = client.post(
                f"{base}/studies",
                content=body,
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json",
                },
            )
            print(f"  STOW {inst.name}: HTTP {resp.status_code} in {time.perf_counter() - started:.1f} s", flush=True)
            resp.raise_for_status()
        print()
        print(f"### GET …/frames/{{n}} over HTTP (dicomcloud up), ms — warm p50 of {repeats}")
        print()
        print("| instance | frame | body bytes | first request | warm p50 | warm p95 | warm / frame 1 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for inst in instances:
            url = f"{base}/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}/frames/"
            first_p50 = None
            for frame in wanted_frames(inst.frames):

                def get(frame: int = frame, url: str = url, name: str = inst.name) -> httpx.Response:
                    resp = client.get(url + str(frame), headers={"Accept": FRAME_ACCEPT})
                    if resp.status_code != 200:
                        raise RuntimeError(f"GET frames/{frame} of {name}: HTTP {resp.status_code} {resp.text}")
                    return resp

                started = time.perf_counter()
                size = len(get().content)
                cold = time.perf_counter() - started
                warm = [timed(get) for _ in range(repeats)]
                p50 = pct(warm, 50)
                first_p50 = first_p50 or p50
                print(
                    f"| {inst.name} | {frame} | {size} | {ms(cold)} | {ms(p50)} | {ms(pct(warm, 95))} "
                    f"| {p50 / first_p50:.2f} |"
                )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/frames.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames of the native multi-frame instance")
    parser.add_argument("--encapsulated-frames", type=int, default=1000, help="frames of the JPEG-LS one")
    parser.add_argument("--size", type=int, default=256, help="rows = columns")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--http", action="store_true", help="also over HTTP with dicomcloud up")
    parser.add_argument("--http-repeats", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="300 / 200 frames of 128x128, fewer repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.encapsulated_frames, args.size, args.repeats, args.http_repeats = 300, 200, 128, 100, 30

    with tempfile.TemporaryDirectory(prefix="bench-frames-") as tmp:
        directory = Path(tmp)
        print(f"writing instances ({args.size}x{args.size}, 16-bit) to {directory}", flush=True)
        instances = [
            write_instance(directory, "native-1", 1, args.size, ExplicitVRLittleEndian, 1),
            write_instance(directory, f"native-{args.frames}", args.frames, args.size, ExplicitVRLittleEndian, 2),
            write_instance(directory, "jpegls-1", 1, args.size, JPEGLSLossless, 3),
            write_instance(
                directory, f"jpegls-{args.encapsulated_frames}", args.encapsulated_frames, args.size, JPEGLSLossless, 4
            ),
        ]
        rows = [
            measure(inst, frame, args.repeats, args.cold_runs)
            for inst in instances
            for frame in wanted_frames(inst.frames)
        ]
        print_table(rows)
        if args.http:
            http(instances, args.http_repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
