"""An embedded PostgreSQL server (the ``pgserver`` wheel ships the binaries).

Used by ``dicomcloud up`` when no ``--database-url`` is given: the cluster
lives in ``<data-dir>/pg`` and survives restarts. It listens on a Unix
socket only, so nothing else on the machine can reach it by TCP.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from dicomcloud.errors import Unavailable

log = logging.getLogger(__name__)


ROOT_FALLBACK = Path("/var/lib/dicomcloud")


def _traversable_by_others(path: Path) -> bool:
    """Can a non-root user reach ``path``? (every existing ancestor has o+x)"""
    for ancestor in [path, *path.parents]:
        if ancestor.exists() and not ancestor.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def cluster_dir(pgdata: Path) -> Path:
    """Where the cluster for ``pgdata`` lives.

    PostgreSQL refuses to run as root, so as root the wheel runs it as the
    user ``pgserver``, which must be able to reach the cluster. When the data
    dir sits below a folder only root may enter (``/root`` is 0700), the
    cluster goes to ``/var/lib/dicomcloud/pg-<hash of the data dir>`` instead
    — the same place on every start, so state survives restarts.
    """
    pgdata = pgdata.resolve()
    if os.geteuid() != 0 or _traversable_by_others(pgdata.parent):
        return pgdata
    digest = hashlib.sha1(str(pgdata).encode()).hexdigest()[:12]
    return ROOT_FALLBACK / f"pg-{digest}"


class EmbeddedPostgres:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = cluster_dir(pgdata)
        if self.pgdata != pgdata.resolve():
            ROOT_FALLBACK.mkdir(parents=True, exist_ok=True)
            ROOT_FALLBACK.chmod(0o755)
            pgdata.parent.mkdir(parents=True, exist_ok=True)
            (pgdata.parent / "pg.location").write_text(f"{self.pgdata}\n")
            log.warning(
                "%s is not reachable by the unprivileged user PostgreSQL runs as; the embedded cluster lives in %s",
                pgdata,
                self.pgdata,
            )
        self._server: Any = None

    def start(self) -> str:
        """Start (or reuse) the cluster; return a connection URL."""
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.pgdata.parent / "run"))
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            import pgserver

            self.pgdata.mkdir(parents=True, exist_ok=True)
            server: Any = pgserver.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
            self._server = server
            url: str = server.get_uri()
        except Exception as exc:
            raise Unavailable(f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}") from exc
        log.info("embedded PostgreSQL running in %s", self.pgdata)
        return url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
