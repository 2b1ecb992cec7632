"""Small helpers shared by the server launchers of the benchmark.

Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

ECHOSCU = "/usr/bin/echoscu"  # DCMTK's; .venv/bin/echoscu is pynetdicom's


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: Nagle off (see ARCHITECTURE.md §8)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


class ManagedProcess:
    """A server process started by the benchmark, in a session of its own.

    ``stop()`` signals only this process (and then its own process group,
    which holds only what it started, e.g. an embedded PostgreSQL).
    """

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(cwd) if cwd else None,
            env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 20.0) -> int | None:
        pgid = self.proc.pid  # start_new_session: the group id is our pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=10)
        # Whatever the server left behind in its own group (e.g. postgres).
        for sig, wait in ((signal.SIGTERM, 8.0), (signal.SIGKILL, 3.0)):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                break
            end = time.monotonic() + wait
            while time.monotonic() < end:
                try:
                    os.killpg(pgid, 0)
                except (ProcessLookupError, PermissionError):
                    break
                time.sleep(0.2)
            else:
                continue
            break
        self._log.close()
        return self.proc.returncode


def wait_http(url: str, proc: ManagedProcess, timeout: float) -> None:
    """Wait until GET url answers with a status below 500."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(
                    f"server exited with {proc.proc.returncode} before {url} answered; log tail:\n{tail(proc.log_path)}"
                )
            try:
                r = client.get(url)
                if r.status_code < 500:
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout}s ({last}); log tail:\n{tail(proc.log_path)}")


def wait_echo(host: str, port: int, called_aet: str, proc: ManagedProcess, timeout: float) -> None:
    """Wait until a C-ECHO (DCMTK echoscu) succeeds."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"server exited before C-ECHO; log tail:\n{tail(proc.log_path)}")
        r = subprocess.run(
            [ECHOSCU, "-aet", "BENCH", "-aec", called_aet, "-to", "5", host, str(port)],
            capture_output=True,
            text=True,
            env=dcmtk_env(),
            timeout=30,
        )
        if r.returncode == 0:
            return
        last = (r.stdout + r.stderr).strip()[-300:]
        time.sleep(0.25)
    raise TimeoutError(f"C-ECHO to {called_aet}@{host}:{port} failed for {timeout}s: {last}")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (storescu, ...)."""
    import resource

    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
