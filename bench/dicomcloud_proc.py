"""Start ``dicomcloud up`` for the benchmark, in a temporary data dir.

HTTP and DIMSE listen on 127.0.0.1, on free ports; the embedded PostgreSQL
lives in the data dir. Stopped with SIGTERM (then its process group, which
holds only what it started).

    python bench/dicomcloud_proc.py   # start, print the URLs, wait for Ctrl-C
"""

from __future__ import annotations

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
    from _proc import ManagedProcess, free_port, wait_echo, wait_http
except ImportError:  # imported as bench.dicomcloud_proc
    from bench._proc import ManagedProcess, free_port, wait_echo, wait_http

REPO = Path(__file__).resolve().parent.parent


def dicomcloud_bin() -> str:
    for cand in (Path(sys.executable).parent / "dicomcloud", REPO / ".venv" / "bin" / "dicomcloud"):
        if cand.exists():
            return str(cand)
    found = shutil.which("dicomcloud")
    if not found:
        raise FileNotFoundError("no dicomcloud executable (pip install -e . in the venv)")
    return found


def dicomcloud_versions(exe: str) -> dict[str, str]:
    """``dicomcloud --version`` and the git revision of the checkout (+dirty if src/ changed)."""
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "server": (r.stdout or r.stderr).strip(),
        "git": rev.stdout.strip() + ("+dirty" if dirty else ""),
    }


class DicomcloudServer:
    name = "dicomcloud"
    aet = "DICOMCLOUD"
    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path | None = None,
        keep: bool = False,
        log_level: str = "WARNING",
        env: dict[str, str] | None = None,
    ) -> None:
        """``env``: variables set for the server on top of this process's environment."""
        self._own_tmp = workdir is None
        self.env = env
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="bench-dicomcloud-"))
        self.keep = keep
        self.log_level = log_level
        self.http_port = free_port()
        self.dimse_port = free_port()
        self.proc: ManagedProcess | None = None
        self.exe = dicomcloud_bin()

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    def argv(self) -> list[str]:
        argv = [
            self.exe,
            "up",
            "--data-dir",
            str(self.data_dir),
            "--http-host",
            self.host,
            "--http-port",
            str(self.http_port),
            "--dimse-port",
            str(self.dimse_port),
            "--ae-title",
            self.aet,
        ]
        help_text = subprocess.run([self.exe, "up", "--help"], capture_output=True, text=True, timeout=60).stdout
        if "--dimse-host" in help_text:
            argv += ["--dimse-host", self.host]
        if "--log-level" in help_text:
            argv += ["--log-level", self.log_level]
        return argv

    def start(self, timeout: float = 120.0) -> DicomcloudServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = ManagedProcess(
            self.argv(),
            log_path=self.workdir / "dicomcloud.log",
            cwd=self.workdir,
            env={**os.environ, **self.env} if self.env else None,
        )
        wait_http(f"{self.dicomweb_url}/studies", self.proc, timeout)
        wait_echo(self.host, self.dimse_port, self.aet, self.proc, timeout)
        return self

    def versions(self) -> dict[str, str]:
        return dicomcloud_versions(self.exe)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        self._reap_orphans()
        if self._own_tmp and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _reap_orphans(self) -> None:
        """An embedded PostgreSQL that outlived the server (it may leave our process group):
        only processes whose command line names this run's own temporary data dir."""
        mark = str(self.data_dir)
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "postgres" in cmd and mark in cmd:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(d), signal.SIGTERM)

    def __enter__(self) -> DicomcloudServer:
        try:
            return self.start()
        except BaseException:
            self.stop()  # a server that never got ready does not outlive the run
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    with DicomcloudServer(log_level="INFO") as srv:
        print(
            f"dicomcloud pid {srv.proc.pid if srv.proc else '?'}: {srv.dicomweb_url}, "
            f"DIMSE {srv.aet}@{srv.host}:{srv.dimse_port}, dir {srv.workdir}",
            flush=True,
        )
        try:
            while srv.proc and srv.proc.alive():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
