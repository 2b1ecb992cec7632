"""Start Debian's Orthanc 1.10 with its DICOMweb plugin for the benchmark.

Everything lives in a temporary folder: the JSON configuration, the storage
and index (SQLite), the log. HTTP authentication is off and remote access is
refused (Orthanc 1.10 has no bind-address option: it listens on every
interface, and ``RemoteAccessAllowed: false`` answers 403 to anything but
loopback; the benchmark only ever connects to 127.0.0.1). Orthanc gets ``TCP_NODELAY=1`` in
its environment so that its DCMTK-based C-STORE SCP disables Nagle.

    python bench/orthanc.py   # start, print the URLs, wait for Ctrl-C
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    from _proc import ManagedProcess, dcmtk_env, free_port, wait_echo, wait_http
except ImportError:  # imported as bench.orthanc
    from bench._proc import ManagedProcess, dcmtk_env, free_port, wait_echo, wait_http

ORTHANC_BIN = "/usr/sbin/Orthanc"


def find_dicomweb_plugin() -> str:
    """The plugin's shared object, as installed by the Debian package."""
    out = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True).stdout.split()
    sos = [p for p in out if "DicomWeb" in p and ".so" in p]
    # Prefer the versioned real file over the plugins-folder symlink.
    sos.sort(key=lambda p: (not Path(p).is_file() or Path(p).is_symlink(), p))
    for p in sos:
        if Path(p).exists():
            return p
    raise FileNotFoundError("orthanc-dicomweb installs no libOrthancDicomWeb .so")


def orthanc_version() -> str:
    r = subprocess.run([ORTHANC_BIN, "--version"], capture_output=True, text=True)
    return (r.stdout.splitlines() or ["?"])[0].strip()


def plugin_version() -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "orthanc-dicomweb"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


class OrthancServer:
    name = "Orthanc"
    aet = "ORTHANC"
    host = "127.0.0.1"

    def __init__(self, workdir: Path | None = None, keep: bool = False) -> None:
        self._own_tmp = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="bench-orthanc-"))
        self.keep = keep
        self.http_port = free_port()
        self.dimse_port = free_port()
        self.proc: ManagedProcess | None = None
        self.plugin = find_dicomweb_plugin()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "storage"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    def config(self) -> dict[str, Any]:
        storage = self.data_dir
        return {
            "Name": "bench-orthanc",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "Plugins": [self.plugin],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dimse_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {},
            "OrthancPeers": {},
            "SaveJobs": False,
            "WebDavEnabled": False,
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Ssl": False,
                # Plugin defaults, stated: metadata is read from the files.
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }

    def start(self, timeout: float = 60.0) -> OrthancServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        self.proc = ManagedProcess(
            [ORTHANC_BIN, "--no-jobs", f"--logfile={self.workdir / 'orthanc.log'}", str(cfg)],
            log_path=self.workdir / "stdout.log",
            cwd=self.workdir,
            # Orthanc's DICOM server is Debian's DCMTK, which leaves Nagle on
            # unless TCP_NODELAY=1 is in its environment (ARCHITECTURE §8):
            # without it every C-STORE waits ~40-90 ms for a delayed ACK.
            env=dcmtk_env(),
        )
        wait_http(f"{self.dicomweb_url}/studies", self.proc, timeout)
        wait_echo(self.host, self.dimse_port, self.aet, self.proc, timeout)
        return self

    def versions(self) -> dict[str, str]:
        return {
            "server": orthanc_version(),
            "dicomweb_plugin": plugin_version(),
            "plugin_path": self.plugin,
        }

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        if self._own_tmp and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    with OrthancServer() as srv:
        print(
            f"Orthanc pid {srv.proc.pid if srv.proc else '?'}: {srv.dicomweb_url}, "
            f"DIMSE {srv.aet}@{srv.host}:{srv.dimse_port}, dir {srv.workdir}",
            flush=True,
        )
        try:
            while srv.proc and srv.proc.alive():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
