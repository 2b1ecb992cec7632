"""The distributed stack for e2e tests: every service its own ``dicomcloud <service>`` process.

Processes share a data dir (ROOT), one PostgreSQL database, one Kafka broker
(a topic prefix of their own, so tests never see each other's messages) and,
when ``DICOMCLOUD_TEST_REDIS`` is set, Redis. Each can be started, SIGKILLed
and restarted by name (``storescp``, ``consumer-1``, ``server-2``…; the part
before the dash is the service).

Also here: :class:`Sender`, DCMTK ``storescu`` driven like a modality that
retries — it records which files got a Success response, which is what the
crash tests check against.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import E2E_TIMEOUT, STOP_TIMEOUT, dcmtk_env, dicomcloud_command, free_port

AE_TITLE = "DICOMCLOUD"


def kafka_url(address: str, partitions: int = 4, timeout: float = 5.0) -> str:
    return f"kafka://{address}?prefix=e2e-{uuid.uuid4().hex[:10]}-&partitions={partitions}&timeout={timeout:g}"


@dataclass
class Stack:
    data_dir: Path
    database_url: str
    bus_url: str
    log_dir: Path
    redis_url: str = ""
    dimse_port: int = field(default_factory=free_port)
    http_ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    # -- addresses ------------------------------------------------------------
    def url(self, server: str = "server-1") -> str:
        return f"http://127.0.0.1:{self.http_ports[server]}/dicom-web"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def output(self, name: str) -> str:
        try:
            return self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def outputs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {n} ---\n{self.output(n)[-tail:]}" for n in sorted(self.processes))

    # -- processes ------------------------------------------------------------
    def command(self, name: str) -> list[str]:
        service = name.split("-")[0]
        cmd = [
            *dicomcloud_command(),
            service,
            "--data-dir",
            str(self.data_dir),
            "--database-url",
            self.database_url,
            "--bus",
            self.bus_url,
        ]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        if service == "storescp":
            cmd += ["--dimse-port", str(self.dimse_port), "--ae-title", AE_TITLE, "--dimse-reuse-port"]
        if service == "server":
            port = self.http_ports.setdefault(name, free_port())
            cmd += ["--http-host", "127.0.0.1", "--http-port", str(port)]
        return cmd

    def start(self, name: str, *, wait: bool = True) -> None:
        running = self.processes.get(name)
        assert running is None or running.poll() is not None, f"{name} is running"
        cmd = self.command(name)
        env = {**os.environ, "DICOMCLOUD_DIMSE_HOST": "127.0.0.1", **self.extra_env}
        with self.log_path(name).open("ab") as log:
            log.write(f"\n$ {' '.join(cmd)}\n".encode())
            log.flush()
            self.processes[name] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        if wait:
            self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        process = self.processes[name]
        service = name.split("-")[0]
        deadline = time.monotonic() + E2E_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode} while starting:\n{self.output(name)[-4000:]}")
            if self._ready(name, service):
                return
            time.sleep(0.1)
        pytest.fail(f"{name} not ready after {E2E_TIMEOUT:.0f} s:\n{self.output(name)[-4000:]}")

    def _ready(self, name: str, service: str) -> bool:
        text = self.output(name)
        started = text.rfind("\n$ ")
        text = text[started:]
        if service == "storescp":
            return "C-ECHO/C-STORE SCP" in text
        if service == "server":
            return "HTTP   DICOMweb" in text
        return "data in" in text  # printed once the archive is open

    def kill(self, name: str) -> None:
        """SIGKILL: no clean-up of any kind, as in a crash or an OOM kill."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop(self, name: str, *, signalled: bool = False) -> int:
        """SIGTERM (once) and the exit code; -9 if it had to be killed after 15 s."""
        process = self.processes[name]
        if process.poll() is not None:
            return process.returncode
        if not signalled:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return -9

    def stop_all(self) -> dict[str, int]:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return {name: self.stop(name, signalled=True) for name in list(self.processes)}


# --- a modality that retries -------------------------------------------------------

_SENDING = re.compile(r"^I: Sending file: (.+)$")
_RESPONSE = re.compile(r"^I: Received Store Response \((.+)\)")


def parse_storescu(output: str) -> dict[Path, str]:
    """File → the status text of its Store response, for the files that got one."""
    result: dict[Path, str] = {}
    current: Path | None = None
    for line in output.splitlines():
        if m := _SENDING.match(line):
            current = Path(m.group(1).strip())
        elif (m := _RESPONSE.match(line)) and current is not None:
            result[current] = m.group(1)
            current = None
    return result


@dataclass
class Sender:
    """``workers`` threads, each sending its share of ``files`` with DCMTK storescu, one
    association per chunk, again and again until every file has a Success response
    (or ``stop`` is called). ``succeeded`` only ever grows; ``refused`` counts non-Success."""

    port: int
    files: Sequence[Path]
    workers: int = 4
    chunk: int = 20
    succeeded: set[Path] = field(default_factory=set)
    refused: dict[str, int] = field(default_factory=dict)
    associations: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        shares = [list(self.files[k :: self.workers]) for k in range(self.workers)]
        self._threads = [
            threading.Thread(target=self._run, args=(share, k), daemon=True) for k, share in enumerate(shares)
        ]
        for t in self._threads:
            t.start()

    def _send(self, paths: Iterable[Path], k: int) -> dict[Path, str]:
        args = ["storescu", "-v", "-nh", "-to", "20", "-ta", "20", "-td", "30"]
        args += ["-aet", f"MODALITY{k}", "-aec", AE_TITLE, "127.0.0.1", str(self.port), *map(str, paths)]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=dcmtk_env())
        except subprocess.TimeoutExpired:
            return {}
        return parse_storescu(proc.stdout + proc.stderr)

    def _run(self, share: list[Path], k: int) -> None:
        pending = list(share)
        while pending and not self._stop.is_set():
            batch, pending = pending[: self.chunk], pending[self.chunk :]
            statuses = self._send(batch, k)
            with self._lock:
                self.associations += 1
                for path in batch:
                    status = statuses.get(path)
                    if status == "Success":
                        self.succeeded.add(path)
                    else:
                        self.refused[status or "no response"] = self.refused.get(status or "no response", 0) + 1
                        pending.append(path)  # a modality sends it again later
            if batch and not any(statuses.get(p) == "Success" for p in batch):
                time.sleep(0.5)  # the archive is away: back off a little

    def done(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if not self.done():
            self._stop.set()
            for t in self._threads:
                t.join(30)
            pytest.fail(f"the sender did not finish in {timeout:.0f} s: {len(self.succeeded)}/{len(self.files)}")


# --- checks ----------------------------------------------------------------------------


def qido_instances(url: str, study: str, limit: int = 10_000) -> list[dict[str, object]]:
    r = httpx.get(f"{url}/studies/{study}/instances", params={"limit": str(limit)}, timeout=30)
    if r.status_code == 204:
        return []
    r.raise_for_status()
    result: list[dict[str, object]] = r.json()
    return result


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll ``predicate()`` until true; the seconds it took. Fails with ``what``."""
    assert callable(predicate)
    t0 = time.monotonic()
    last: object = None
    while time.monotonic() - t0 < timeout:
        try:
            last = predicate()
            if last is True:
                return time.monotonic() - t0
        except (httpx.HTTPError, OSError) as exc:
            last = repr(exc)
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


# --- dependencies the tests stop and start ------------------------------------------


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PostgresCluster:
    """A PostgreSQL server of one test's own (Debian's binaries), to stop and start at will."""

    directory: Path
    port: int = field(default_factory=free_port)

    @property
    def bin(self) -> Path:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found:
            reason = "Debian's PostgreSQL is not installed (scripts/install-deps.sh installs it)"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"CI=true: {reason}")
            pytest.skip(reason)
        return found[-1].parent

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        # PostgreSQL refuses to run as root: as root it runs as `postgres`, who must reach the
        # directory, and pytest's temporary folders are private to root.
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        for parent in self.directory.parents:
            if parent == Path("/tmp") or not os.access(parent, os.F_OK):
                break
            if os.geteuid() == 0 and not parent.stat().st_mode & 0o001:
                raise RuntimeError(f"{parent} is not reachable by the postgres user; use a folder under /tmp")
        if os.geteuid() == 0:
            import shutil

            shutil.chown(self.directory, "postgres", "postgres")
        subprocess.run(
            _as_postgres([str(self.bin / "initdb"), "-D", str(self.directory / "data"), "-U", "postgres",
                          "-A", "trust", "--no-sync", "-E", "UTF8", "--no-locale"]),
            check=True, capture_output=True,
        )  # fmt: skip

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off"
        subprocess.run(
            _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-l",
                          str(self.directory / "server.log"), "-w", "-t", "60", "-o", options, "start"]),
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        subprocess.run(
            _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.directory / "data"), "-m", mode, "-w", "stop"]),
            capture_output=True,
        )  # fmt: skip


@dataclass
class KafkaBroker:
    """A Kafka broker of one test's own (scripts/kafka.sh), to kill and restart at will."""

    directory: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _script(self, *args: str) -> subprocess.CompletedProcess[str]:
        script = Path(__file__).resolve().parents[2] / "scripts" / "kafka.sh"
        env = {**os.environ, "KAFKA_CONTROLLER_PORT": str(self.controller_port)}
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=180)

    def start(self) -> None:
        result = self._script("start", str(self.directory), str(self.port))
        if result.returncode != 0:
            pytest.fail(f"scripts/kafka.sh start failed:\n{result.stderr[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the broker (no controlled shutdown)."""
        pid_file = self.directory / "kafka.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            try:
                os.kill(pid, signal.SIGKILL)
                while True:  # not our child: wait until it is gone
                    os.kill(pid, 0)
                    time.sleep(0.05)
            except ProcessLookupError:
                pass
            pid_file.unlink()

    def stop(self) -> None:
        self._script("stop", str(self.directory))
