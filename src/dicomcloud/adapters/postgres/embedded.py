"""An embedded PostgreSQL server (the ``pgserver`` wheel ships the binaries).

Used by ``dicomcloud up`` when no ``--database-url`` is given: the cluster
lives in ``<data-dir>/pg`` and survives restarts. It listens on a Unix
socket only, so nothing else on the machine can reach it by TCP.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dicomcloud.errors import Unavailable

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
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
            raise Unavailable(
                f"could not start the embedded PostgreSQL in {self.pgdata}: {exc}"
            ) from exc
        log.info("embedded PostgreSQL running in %s", self.pgdata)
        return url

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
