"""Start dicomcloud in distributed mode for the benchmark: every service a process of its own.

Infrastructure, all throwaway, on 127.0.0.1 and free ports:

- PostgreSQL (Debian's, ``/usr/lib/postgresql/<newest>/bin``): ``initdb`` +
  ``pg_ctl`` in a temporary directory under /tmp (as root both run as the
  ``postgres`` user through ``runuser -u postgres --``, so the directory is
  chmod 755 and chowned to it, as in scripts/test.sh). The server runs with
  PostgreSQL's **defaults** (fsync, synchronous_commit and full_page_writes on:
  this is a benchmark of a durable archive); only ``listen_addresses``, the port
  and the socket directory are set.
- Kafka: ``bash scripts/kafka.sh start DIR PORT`` (single-node KRaft, jars
  already fetched) and ``bash scripts/kafka.sh stop DIR``.
- Redis: ``redis-server --bind 127.0.0.1 --port P --save '' --appendonly no``
  (no persistence), in a session of its own.

Then the services, each ``dicomcloud <service> --data-dir D --database-url
postgresql://… --bus 'kafka://127.0.0.1:K?partitions=4' --redis-url
redis://127.0.0.1:R/0 --log-level WARNING`` in a session of its own:
``storescp`` x W (``--dimse-reuse-port``: they share the DIMSE port, the
kernel spreads associations over them), ``consumer`` x C, ``loader``,
``webworker``, ``server``. Ready when each has printed its start line
("C-ECHO/C-STORE SCP", "HTTP   DICOMweb", "data in"), the HTTP API answers, a
C-ECHO succeeds and the Kafka consumer groups are stable with all their members.

Stopped with SIGTERM to every service (then their process groups), then Kafka,
Redis and PostgreSQL are stopped and the temporary directories removed.

CPU accounting (``cpu_parts()``, bench/_cpu.py): CPU seconds of every service's
process tree **and** of Kafka's, PostgreSQL's and Redis's (Orthanc's index is inside its
own process, and the embedded dicomcloud's PostgreSQL is in its process
group, so the infrastructure is counted for every server).

    python bench/dicomcloud_distributed.py [--storescp-workers 2]   # start, print, wait for Ctrl-C
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from _cpu import postmaster_pid, tree_cpu_seconds
    from _proc import ManagedProcess, free_port, tail, wait_echo, wait_http
    from dicomcloud_proc import dicomcloud_bin, dicomcloud_versions
except ImportError:  # imported as bench.dicomcloud_distributed
    from bench._cpu import postmaster_pid, tree_cpu_seconds
    from bench._proc import ManagedProcess, free_port, tail, wait_echo, wait_http
    from bench.dicomcloud_proc import dicomcloud_bin, dicomcloud_versions

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "scripts" / "kafka.sh"

READY_MARK = {
    "storescp": "C-ECHO/C-STORE SCP",
    "server": "HTTP   DICOMweb",
    "consumer": "data in",
    "loader": "data in",
    "webworker": "data in",
}


def pg_bin() -> Path:
    cands = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name.split(".")],
    )
    if not cands or not (cands[-1] / "initdb").exists():
        raise FileNotFoundError("no Debian PostgreSQL under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    return cands[-1]


def _as_pg(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class DistributedDicomcloudServer:
    name = "dicomcloud-distributed"
    aet = "DICOMCLOUD"
    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path | None = None,
        keep: bool = False,
        log_level: str = "WARNING",
        storescp_workers: int = 2,
        consumers: int = 2,
        partitions: int = 4,
    ) -> None:
        self._own_tmp = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="bench-dicomcloud-dist-"))
        self.keep = keep
        self.log_level = log_level
        self.storescp_workers = max(1, storescp_workers)
        self.consumers = max(1, consumers)
        self.partitions = partitions
        self.http_port = free_port()
        self.dimse_port = free_port()
        self.pg_port = free_port()
        self.kafka_port = free_port()
        self.redis_port = free_port()
        self.exe = dicomcloud_bin()
        self.pg_bin = pg_bin()
        self.pg_dir: Path | None = None  # under /tmp, reachable by the postgres user
        self.redis: ManagedProcess | None = None
        self.kafka_started = False
        self.services: list[tuple[str, ManagedProcess]] = []
        self.startup_steps: dict[str, float] = {}
        self.warnings: list[str] = []
        self.exit_codes: dict[str, int | None] = {}

    # ------------------------------------------------------------------ addresses

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def kafka_dir(self) -> Path:
        return self.workdir / "kafka"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def storage_paths(self) -> list[Path]:
        """Everything the archive keeps on disk: files, the index (PostgreSQL) and the bus (Kafka)."""
        out = [self.data_dir, self.kafka_dir / "data"]
        if self.pg_dir is not None:
            out.append(self.pg_dir / "data")
        return out

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    @property
    def bus_url(self) -> str:
        return f"kafka://127.0.0.1:{self.kafka_port}?partitions={self.partitions}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def proc(self) -> ManagedProcess | None:
        """The HTTP server process (for code that expects one process)."""
        return next((p for n, p in self.services if n == "server"), None)

    # ---------------------------------------------------------------- infrastructure

    def _start_postgres(self) -> None:
        t = time.perf_counter()
        self.pg_dir = Path(tempfile.mkdtemp(prefix="bench-dicomcloud-pg.", dir="/tmp"))
        os.chmod(self.pg_dir, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.pg_dir, "postgres", "postgres")
        data = self.pg_dir / "data"
        # --no-sync: initdb does not fsync its own files at the end (start-up only);
        # the server itself runs with fsync on.
        r = subprocess.run(
            _as_pg(
                [
                    str(self.pg_bin / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--no-sync",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed ({r.returncode}): {r.stdout[-1500:]}{r.stderr[-1500:]}")
        opts = f"-c listen_addresses=127.0.0.1 -p {self.pg_port} -k {self.pg_dir}"
        r = subprocess.run(
            _as_pg(
                [
                    str(self.pg_bin / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(self.pg_dir / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    opts,
                    "start",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed ({r.returncode}): {r.stdout[-800:]}{r.stderr[-800:]}\n"
                f"{tail(self.pg_dir / 'server.log')}"
            )
        self.startup_steps["postgresql_s"] = round(time.perf_counter() - t, 2)

    def _stop_postgres(self) -> None:
        if self.pg_dir is None:
            return
        data = self.pg_dir / "data"
        if (data / "postmaster.pid").exists():
            pid = self._postmaster_pid()
            r = subprocess.run(
                _as_pg([str(self.pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"]),
                capture_output=True,
                text=True,
                timeout=120,
            )
            if r.returncode != 0 and pid:
                # Our own postmaster, by its pid: immediate shutdown.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGQUIT)
        if not self.keep:
            shutil.rmtree(self.pg_dir, ignore_errors=True)

    def _postmaster_pid(self) -> int | None:
        return None if self.pg_dir is None else postmaster_pid(self.pg_dir / "data")

    def _start_kafka(self) -> None:
        t = time.perf_counter()
        self.kafka_dir.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["bash", str(KAFKA_SH), "start", str(self.kafka_dir), str(self.kafka_port)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        self.kafka_started = (self.kafka_dir / "kafka.pid").exists()
        if r.returncode != 0:
            raise RuntimeError(f"scripts/kafka.sh start failed ({r.returncode}): {r.stderr[-1500:]}")
        self.startup_steps["kafka_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        self._warm_up_kafka()
        self.startup_steps["kafka_warmup_s"] = round(time.perf_counter() - t, 2)

    def _warm_up_kafka(self, records: int = 3000) -> None:
        """A broker in production has run for days; a fresh JVM spends its first seconds
        compiling (the first 300 publishes cost 6.8 ms of broker CPU each here, later ones
        1.8 ms). Publish and consume ``records`` records on a topic of its own first, each
        publish waiting for its acknowledgement as storescp's do, so that the measured
        workloads meet a warm broker."""
        try:
            from confluent_kafka import Consumer, Producer
        except ImportError:
            self.warnings.append("confluent_kafka not importable: Kafka not warmed up")
            return
        address = f"127.0.0.1:{self.kafka_port}"
        producer = Producer({"bootstrap.servers": address, "acks": "all", "enable.idempotence": True,
                             "linger.ms": 0, "socket.nagle.disable": True})  # fmt: skip
        delivered = 0

        def done(err: object, msg: object) -> None:
            nonlocal delivered
            delivered += 1

        for i in range(records):
            producer.produce("bench-warmup", b"x" * 700, str(i).encode(), on_delivery=done)
            while delivered <= i:
                producer.poll(0.01)
        producer.flush(10)
        consumer = Consumer({"bootstrap.servers": address, "group.id": "bench-warmup",
                             "auto.offset.reset": "earliest"})  # fmt: skip
        consumer.subscribe(["bench-warmup"])
        got, deadline = 0, time.monotonic() + 30
        while got < records and time.monotonic() < deadline:
            got += len(consumer.consume(500, 0.5))
        consumer.close()

    def _kafka_pid(self) -> int | None:
        try:
            return int((self.kafka_dir / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _stop_kafka(self) -> None:
        if self.kafka_started or (self.kafka_dir / "kafka.pid").exists():
            subprocess.run(["bash", str(KAFKA_SH), "stop", str(self.kafka_dir)], capture_output=True, timeout=120)
            self.kafka_started = False

    def _start_redis(self) -> None:
        t = time.perf_counter()
        rdir = self.workdir / "redis"
        rdir.mkdir(parents=True, exist_ok=True)
        self.redis = ManagedProcess(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.redis_port),
                "--dir",
                str(rdir),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            log_path=self.logs_dir / "redis.log",
            cwd=rdir,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not self.redis.alive():
                raise RuntimeError(f"redis-server exited: {tail(self.redis.log_path)}")
            r = subprocess.run(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis_port), "ping"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            if "PONG" in r.stdout:
                self.startup_steps["redis_s"] = round(time.perf_counter() - t, 2)
                return
            time.sleep(0.1)
        raise TimeoutError(f"redis-server not answering PING: {tail(self.redis.log_path)}")

    def flush_cache(self) -> None:
        """Empty Redis (FLUSHALL): the next read answers are computed again."""
        r = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.redis_port), "FLUSHALL"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if "OK" not in r.stdout:
            raise RuntimeError(f"redis-cli FLUSHALL: {r.stdout}{r.stderr}")

    # ---------------------------------------------------------------------- services

    def _common(self) -> list[str]:
        return [
            "--data-dir",
            str(self.data_dir),
            "--database-url",
            self.database_url,
            "--bus",
            self.bus_url,
            "--redis-url",
            self.redis_url,
            "--log-level",
            self.log_level,
        ]

    def service_argv(self, service: str) -> list[str]:
        argv = [self.exe, service, *self._common()]
        if service == "storescp":
            argv += [
                "--dimse-host",
                self.host,
                "--dimse-port",
                str(self.dimse_port),
                "--ae-title",
                self.aet,
                "--dimse-reuse-port",
            ]
        elif service == "server":
            argv += ["--http-host", self.host, "--http-port", str(self.http_port)]
        return argv

    def _spawn(self, service: str, label: str) -> None:
        p = ManagedProcess(self.service_argv(service), log_path=self.logs_dir / f"{label}.log", cwd=self.workdir)
        self.services.append((label, p))

    def _wait_marks(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = {label for label, _ in self.services}
        while pending and time.monotonic() < deadline:
            for label, p in self.services:
                if label not in pending:
                    continue
                service = label.split("-")[0]
                try:
                    text = p.log_path.read_text(errors="replace")
                except OSError:
                    text = ""
                if READY_MARK[service] in text:
                    pending.discard(label)
                elif not p.alive():
                    raise RuntimeError(
                        f"dicomcloud {service} ({label}) exited with {p.proc.returncode} during start-up; "
                        f"command: {' '.join(p.argv)}\nlog tail:\n{tail(p.log_path)}"
                    )
            time.sleep(0.1)
        if pending:
            raise TimeoutError(
                f"not ready after {timeout:.0f}s: {sorted(pending)}; "
                + "; ".join(f"{lb}: {tail(p.log_path, 5)}" for lb, p in self.services if lb in pending)
            )

    def _wait_groups(self, timeout: float) -> None:
        """Until the Kafka consumer groups are stable with all their members (so the
        first ingest does not pay for a rebalance). A timeout is a warning only."""
        try:
            from confluent_kafka import ConsumerGroupState
            from confluent_kafka.admin import AdminClient
        except ImportError:
            self.warnings.append("confluent_kafka not importable: consumer groups not checked")
            return
        # The group of a service is its name (kafka_bus: group.id = prefix + name; no prefix here).
        want = {"consumer": self.consumers, "loader": 1, "webworker": 1}
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{self.kafka_port}"})
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            futures = admin.describe_consumer_groups(list(want), request_timeout=5)
            ok = True
            for gid, fut in futures.items():
                try:
                    d = fut.result(timeout=10)
                    n = len(d.members)
                    last[gid] = f"{d.state.name} {n}/{want[gid]} members"
                    if d.state != ConsumerGroupState.STABLE or n < want[gid]:
                        ok = False
                except Exception as e:  # not there yet
                    last[gid] = repr(e)[:120]
                    ok = False
            if ok:
                return
            self._check_alive("waiting for the consumer groups")
            time.sleep(0.25)
        self.warnings.append(f"Kafka consumer groups not all stable after {timeout:.0f}s: {last}")

    def _check_alive(self, when: str) -> None:
        for label, p in self.services:
            if not p.alive():
                raise RuntimeError(
                    f"dicomcloud {label} exited with {p.proc.returncode} while {when}; "
                    f"command: {' '.join(p.argv)}\nlog tail:\n{tail(p.log_path)}"
                )

    # ------------------------------------------------------------------- start/stop

    def start(self, timeout: float = 180.0) -> DistributedDicomcloudServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        # The three in parallel (Kafka's JVM takes longest).
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            futs = [ex.submit(f) for f in (self._start_kafka, self._start_postgres, self._start_redis)]
            errors = [f.exception() for f in futs]
        for e in errors:
            if e is not None:
                raise e
        self.startup_steps["infrastructure_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        for k in range(self.storescp_workers):
            self._spawn("storescp", f"storescp-{k + 1}")
        for k in range(self.consumers):
            self._spawn("consumer", f"consumer-{k + 1}")
        for service in ("loader", "webworker", "server"):
            self._spawn(service, service)
        self._wait_marks(timeout)
        server = self.proc
        assert server is not None
        wait_http(f"{self.dicomweb_url}/studies", server, 60)
        storescp = self.services[0][1]
        wait_echo(self.host, self.dimse_port, self.aet, storescp, 60)
        self._wait_groups(60)
        self._check_alive("starting")
        self.startup_steps["services_s"] = round(time.perf_counter() - t, 2)
        return self

    def alive(self) -> bool:
        return bool(self.services) and all(p.alive() for _, p in self.services)

    def exit_info(self) -> str:
        return (
            ", ".join(f"{label} exited with {p.proc.returncode}" for label, p in self.services if not p.alive())
            or "all services running"
        )

    def stop(self) -> None:
        for _, p in self.services:  # SIGTERM to all first, then wait for each
            if p.alive():
                with contextlib.suppress(ProcessLookupError):
                    p.proc.send_signal(signal.SIGTERM)
        with concurrent.futures.ThreadPoolExecutor(max(1, len(self.services))) as ex:
            list(ex.map(lambda lp: lp[1].stop(), self.services))
        self.exit_codes = {label: p.proc.returncode for label, p in self.services}
        for step in (self._stop_kafka, self._stop_redis, self._stop_postgres):
            try:
                step()
            except Exception as e:  # go on stopping the rest
                self.warnings.append(f"{step.__name__}: {type(e).__name__}: {e}")
        if self._own_tmp and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_redis(self) -> None:
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> DistributedDicomcloudServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------- reporting

    def cpu_roots(self) -> dict[str, list[int | None]]:
        roots: dict[str, list[int | None]] = {}
        for label, p in self.services:
            roots.setdefault(label.split("-")[0], []).append(p.pid)
        roots["postgresql"] = [self._postmaster_pid()]
        roots["kafka"] = [self._kafka_pid()]
        roots["redis"] = [self.redis.pid if self.redis else None]
        return roots

    def cpu_parts(self) -> dict[str, float]:
        """CPU seconds so far per component: the services, and Kafka, PostgreSQL, Redis
        (each with its live descendants and reaped children)."""
        return tree_cpu_seconds(self.cpu_roots())

    def versions(self) -> dict[str, str]:
        pg = subprocess.run([str(self.pg_bin / "postgres"), "--version"], capture_output=True, text=True)
        rv = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
        return {
            **dicomcloud_versions(self.exe),
            "mode": (
                f"distributed: storescp x{self.storescp_workers} (reuse-port), consumer x{self.consumers}, "
                f"loader, webworker, server; bus {self.bus_url}"
            ),
            "postgresql": pg.stdout.strip() + " (defaults: fsync on)",
            "kafka": os.environ.get("KAFKA_VERSION", "4.1.1") + " (scripts/kafka.sh, KRaft single node)",
            "redis": rv.stdout.strip().split(" sha=")[0] + " (no persistence)",
        }

    def log_tail(self, n: int = 60) -> str:
        """The tail of every service log that has something in it (dead services first)."""
        items = sorted(self.services, key=lambda lp: lp[1].alive())
        per = max(8, n // max(1, len(items)))
        out = []
        for label, p in items:
            t = tail(p.log_path, per)
            state = "running" if p.alive() else f"exited {p.proc.returncode}"
            if t or not p.alive():
                out.append(f"== {label} (pid {p.pid}, {state})\n{t}")
        return "\n".join(out)

    def log_problems(self, limit: int = 60) -> list[str]:
        """WARNING/ERROR/CRITICAL/Traceback lines of the service logs."""
        out: list[str] = []
        for label, p in self.services:
            try:
                lines = p.log_path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for ln in lines:
                if any(k in ln for k in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", "Error:")):
                    out.append(f"{label}: {ln[:400]}")
                    if len(out) >= limit:
                        return out
        return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="start dicomcloud's services as separate processes; Ctrl-C stops")
    ap.add_argument("--storescp-workers", type=int, default=2)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    with DistributedDicomcloudServer(
        log_level=a.log_level, storescp_workers=a.storescp_workers, consumers=a.consumers, keep=a.keep
    ) as srv:
        print(
            f"dicomcloud (distributed): {srv.dicomweb_url}, DIMSE {srv.aet}@{srv.host}:{srv.dimse_port}, "
            f"{srv.database_url}, {srv.bus_url}, {srv.redis_url}, dir {srv.workdir}; "
            f"start-up {srv.startup_steps}" + (f"; warnings: {srv.warnings}" if srv.warnings else ""),
            flush=True,
        )
        # SIGTERM too (a background job ignores SIGINT): stop everything cleanly.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while srv.alive():
                time.sleep(1)
            print(f"a service stopped: {srv.exit_info()}\n{srv.log_tail()}", file=sys.stderr)
        except KeyboardInterrupt:
            pass
