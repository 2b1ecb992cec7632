"""On-the-fly transcoding cost per frame (WADO-RS ``/frames`` and instance retrieve).

A 512x512 CT frame, 16 bits allocated / 12 stored, in two flavours: the
factory's smooth synthetic pixels, and the same with Gaussian noise of a
real CT (sigma 10) so that the codecs work as hard as on patient data. Each
pair is run through :func:`dicomcloud.domain.transcode.transcode_frames` —
the code ``/frames`` runs — ``--repeat`` times on one thread; the table gives
the median and 90th percentile in milliseconds per frame and the size of
the result against the 512 KiB native frame. JPEG Baseline needs 8-bit
samples: its rows use the frame scaled to 8 bits.

    .venv/bin/python bench/transcode.py              # ~1 min on 2 cores
    .venv/bin/python bench/transcode.py --repeat 5   # quicker
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.factory

from tests.factory import pixel_array

from dicomcloud.domain import codecs
from dicomcloud.domain import transcode as t
from dicomcloud.domain import transfer_syntaxes as ts

EVRLE = ts.EXPLICIT_VR_LITTLE_ENDIAN
SHORT = {
    EVRLE: "Explicit VR LE",
    ts.RLE_LOSSLESS: "RLE",
    ts.JPEG_LOSSLESS_SV1: "JPEG Lossless SV1",
    ts.JPEG_LS_LOSSLESS: "JPEG-LS",
    ts.JPEG_LS_NEAR_LOSSLESS: "JPEG-LS near (2)",
    ts.JPEG_2000_LOSSLESS: "JPEG 2000",
    ts.JPEG_2000: "JPEG 2000 lossy (60 dB)",
    ts.HTJ2K_LOSSLESS: "HTJ2K",
    ts.HTJ2K: "HTJ2K lossy",
    ts.JPEG_BASELINE: "JPEG Baseline (8-bit)",
}
PAIRS = [
    (ts.JPEG_2000_LOSSLESS, EVRLE),
    (ts.JPEG_LS_LOSSLESS, EVRLE),
    (ts.HTJ2K_LOSSLESS, EVRLE),
    (ts.RLE_LOSSLESS, EVRLE),
    (ts.JPEG_LOSSLESS_SV1, EVRLE),
    (EVRLE, ts.JPEG_LS_LOSSLESS),
    (EVRLE, ts.JPEG_2000_LOSSLESS),
    (EVRLE, ts.JPEG_2000),
    (EVRLE, ts.HTJ2K_LOSSLESS),
    (EVRLE, ts.HTJ2K),
    (EVRLE, ts.RLE_LOSSLESS),
    (EVRLE, ts.JPEG_LOSSLESS_SV1),
    (EVRLE, ts.JPEG_BASELINE),
    (ts.JPEG_2000_LOSSLESS, ts.HTJ2K_LOSSLESS),
    (ts.JPEG_2000_LOSSLESS, ts.JPEG_LS_LOSSLESS),
    (ts.JPEG_LS_LOSSLESS, ts.HTJ2K_LOSSLESS),
]
CT = codecs.PixelDescription(512, 512, bits_allocated=16, bits_stored=12)
GRAY8 = codecs.PixelDescription(512, 512, bits_allocated=8, bits_stored=8)


def frames() -> dict[str, np.ndarray]:
    smooth = pixel_array(512, 512)
    noise = np.random.default_rng(1).normal(0, 10, smooth.shape)
    noisy = np.clip(smooth + noise, 0, 4095).astype(np.uint16)
    return {"smooth": smooth, "noisy": noisy}


def run(repeat: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for flavour, pixels in frames().items():
        for source, target in PAIRS:
            px, arr = (GRAY8, (pixels >> 4).astype(np.uint8)) if target == ts.JPEG_BASELINE else (CT, pixels)
            native = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            stored = native if source == EVRLE else t.transcode_frames([native], px, EVRLE, source)[0]
            times = []
            out = b""
            for _ in range(repeat):
                started = time.perf_counter()
                (out,) = t.transcode_frames([stored], px, source, target)
                times.append((time.perf_counter() - started) * 1000)
            times.sort()
            rows.append(
                {
                    "frame": flavour,
                    "from": SHORT[source],
                    "to": SHORT[target],
                    "p50": statistics.median(times),
                    "p90": times[min(len(times) - 1, int(len(times) * 0.9))],
                    "in": len(stored),
                    "out": len(out),
                    "native": len(native),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs per pair (default 15)")
    args = parser.parse_args(argv)
    rows = run(args.repeat)
    print(f"512x512 CT frame, 16/12 bits; {args.repeat} runs per pair, one thread; ms per frame\n")
    print("| frame | from | to | p50 ms | p90 ms | in KiB | out KiB | out ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = float(r["native"]) / float(r["out"])  # type: ignore[arg-type]
        print(
            f"| {r['frame']} | {r['from']} | {r['to']} | {r['p50']:.1f} | {r['p90']:.1f} "
            f"| {int(r['in']) / 1024:.0f} | {int(r['out']) / 1024:.0f} | {ratio:.1f}:1 |"  # type: ignore[call-overload]
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
