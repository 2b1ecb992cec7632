"""What OAuth2 costs a viewer: the same reads with and without bearer tokens, same run.

Starts Keycloak (scripts/keycloak.sh, or the issuer in DICOMCLOUD_BENCH_OIDC_ISSUER)
and two `dicomcloud up` archives on loopback — one with DICOMCLOUD_AUTH_ISSUER, one
without — stores the same series into both, then sends the same requests to each,
alternating, with C concurrent clients: QIDO-RS series search, series /metadata,
frames. With auth every request carries one token (what a viewer does); a
second row cycles through 200 tokens (Keycloak mints them before the timing),
so that 200 of the requests pay a signature check the verifier has not seen.
Also printed: the cost of one TokenVerifier.verify, new and remembered.

    .venv/bin/python bench/auth.py [--requests 1000] [--concurrency 8]

Prints a Markdown table: p50 / p95 latency (ms) and requests/s, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH_DIR))

from _proc import free_port  # noqa: E402
from dicomcloud_proc import DicomcloudServer  # noqa: E402
from tests import factory  # noqa: E402
from tests.oidc.keycloak import token  # noqa: E402


@contextlib.contextmanager
def keycloak() -> Iterator[str]:
    given = os.environ.get("DICOMCLOUD_BENCH_OIDC_ISSUER", "")
    if given:
        yield given
        return
    home = Path(tempfile.mkdtemp(prefix="bench-keycloak-"))
    script = str(REPO / "scripts" / "keycloak.sh")
    subprocess.run(["bash", script, "fetch"], check=True, stdout=subprocess.DEVNULL)
    issuer = subprocess.run(
        ["bash", script, "start", str(home), str(free_port())], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield issuer
    finally:
        subprocess.run(["bash", script, "stop", str(home)], check=False)
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def archive(env: dict[str, str]) -> Iterator[str]:
    with DicomcloudServer(env=env) as server:
        yield server.base_url


def store(base: str, tenant: str, headers: dict[str, str]) -> tuple[str, str, list[str]]:
    datasets = [
        factory.make_instance(PatientID="BENCH-AUTH", InstanceNumber=i, rows=256, columns=256) for i in range(1, 21)
    ]
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + factory.part10_bytes(d) + b"\r\n"
            for d in datasets
        )
        + f"--{boundary}--\r\n".encode()
    )
    url = f"{base}/tenants/{tenant}/dicom-web"
    r = httpx.post(
        f"{url}/studies",
        content=body,
        headers={**headers, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )
    r.raise_for_status()
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # searchable and the series metadata built
        m = httpx.get(f"{url}/studies/{study}/series/{series}/metadata", headers=headers, timeout=10)
        if m.status_code == 200 and len(m.json()) == len(datasets):
            break
        time.sleep(0.3)
    return study, series, [str(d.SOPInstanceUID) for d in datasets]


async def run(urls: list[str], headers: list[dict[str, str]], concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    position = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal position
        while position < len(urls):
            i = position
            position += 1
            t0 = time.perf_counter()
            r = await http.get(urls[i], headers=headers[i % len(headers)])
            latencies.append(time.perf_counter() - t0)
            if r.status_code not in (200, 204):
                raise RuntimeError(f"{urls[i]}: {r.status_code} {r.text[:200]}")

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def verify_cost(issuer: str, rounds: int = 2000) -> tuple[float, float]:
    """µs per TokenVerifier.verify of a Keycloak token: a token not seen before (signature
    and claims checked), and one seen before (remembered)."""
    from dicomcloud.adapters.oidc import JwksKeys
    from dicomcloud.usecases.authenticate import TokenVerifier

    async def measure() -> tuple[float, float]:
        keys = JwksKeys(issuer)
        algorithms = ("RS256",)
        make = lambda: TokenVerifier(  # noqa: E731
            keys, issuer=issuer, audience="dicomcloud", algorithms=algorithms, leeway=30, tenant_claim="tenants"
        )
        tok = token("reader-a", issuer=issuer)
        await make().verify(tok)  # keys fetched
        t0 = time.perf_counter()
        for _ in range(rounds):
            await make().verify(tok)  # a new verifier remembers nothing
        cold = (time.perf_counter() - t0) / rounds
        warm_verifier = make()
        await warm_verifier.verify(tok)
        t0 = time.perf_counter()
        for _ in range(rounds):
            await warm_verifier.verify(tok)
        warm = (time.perf_counter() - t0) / rounds
        await keys.close()
        return cold * 1e6, warm * 1e6

    return asyncio.run(measure())


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    tenant = "hosp-a"
    with keycloak() as issuer, archive({"DICOMCLOUD_AUTH_ISSUER": issuer}) as secured, archive({}) as open_:
        one = {"Authorization": f"Bearer {token('writer-a', issuer=issuer)}"}
        fresh = [{"Authorization": f"Bearer {token('reader-a', issuer=issuer)}"} for _ in range(200)]
        targets = {"with one token": (secured, [one]), "200 tokens in turn": (secured, fresh), "no auth": (open_, [{}])}
        layout = {base: store(base, tenant, hdrs[0]) for base, hdrs in {secured: [one], open_: [{}]}.items()}
        rows: dict[tuple[str, str], tuple[float, float, float]] = {}
        for workload in ("QIDO series", "series metadata", "frame"):
            for _round in range(2):  # alternate the servers; keep the second round (warm)
                for name, (base, hdrs) in targets.items():
                    study, series, sops = layout[base]
                    url = f"{base}/tenants/{tenant}/dicom-web"
                    if workload == "QIDO series":
                        urls = [f"{url}/studies/{study}/series?limit={i % 7 + 1}" for i in range(args.requests)]
                    elif workload == "series metadata":
                        urls = [f"{url}/studies/{study}/series/{series}/metadata"] * args.requests
                    else:
                        urls = [
                            f"{url}/studies/{study}/series/{series}/instances/{sops[i % len(sops)]}/frames/1"
                            for i in range(args.requests)
                        ]
                    lat, took = asyncio.run(run(urls, hdrs, args.concurrency))
                    rows[(workload, name)] = (pct(lat, 50), pct(lat, 95), len(lat) / took)
        cold, warm = verify_cost(issuer)
    print(f"\nTokenVerifier.verify of a Keycloak RS256 token: {cold:.0f} µs new, {warm:.1f} µs remembered")
    print(f"\n{args.requests} requests per cell, {args.concurrency} concurrent clients, second (warm) round\n")
    print("| workload | server | p50 ms | p95 ms | req/s | req/s vs no auth |")
    print("|---|---|---|---|---|---|")
    for (workload, name), (p50, p95, rate) in rows.items():
        base_rate = rows[(workload, "no auth")][2]
        print(f"| {workload} | {name} | {p50:.1f} | {p95:.1f} | {rate:.0f} | {rate / base_rate:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
