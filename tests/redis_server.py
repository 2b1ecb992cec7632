"""Redis for the tests: the shared test server, and throwaway servers a test owns.

``DICOMCLOUD_TEST_REDIS`` names the shared server (``scripts/test.sh`` starts
one; without it the Redis tests are skipped on a developer's machine and fail
under ``CI=true``). Each test puts its keys under a prefix of its own
(``?prefix=`` of the URL, see ``adapters/redis_cache.py``).

:class:`ThrowawayRedis` is a ``redis-server`` of one test, on a free loopback
port, in a folder of its own, without persistence unless asked (``SAVE``), so
that a test can kill it, pause it (SIGSTOP) and start it again on the same
port — from its snapshot when it saved one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REDIS = os.environ.get("DICOMCLOUD_TEST_REDIS", "")
IN_CI = os.environ.get("CI", "").lower() == "true"
NO_REDIS = "DICOMCLOUD_TEST_REDIS is not set (scripts/test.sh starts a Redis server)"

needs_redis = pytest.mark.skipif(not REDIS and not IN_CI, reason=NO_REDIS)
needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None and not IN_CI,
    reason="redis-server is not installed (scripts/install-deps.sh installs it)",
)


def with_prefix(url: str, prefix: str | None = None) -> str:
    prefix = prefix or f"t{uuid.uuid4().hex[:10]}-"
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


def test_redis_url() -> str:
    """The shared test server under a fresh key prefix."""
    if not REDIS:
        pytest.fail(f"CI=true and {NO_REDIS}: the Redis tests must run in CI")
    return with_prefix(REDIS)


test_redis_url.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _command(port: int, *args: str) -> bytes:
    """One inline command, one reply line (enough for PING and SAVE)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(" ".join(args).encode() + b"\r\n")
        return s.makefile("rb").readline().strip()


class ThrowawayRedis:
    def __init__(self, directory: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (scripts/install-deps.sh installs it)")
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (again, on the same port, loading ``dump.rdb`` if a SAVE left one)."""
        assert self.process is None
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                *("redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)),
                *("--save", "", "--appendonly", "no", "--dbfilename", "dump.rdb"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited with {self.process.returncode}")
            try:
                if _command(self.port, "PING") == b"+PONG":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail("redis-server not ready after 10 s")

    def save(self) -> None:
        """A snapshot (``dump.rdb``) that the next start loads."""
        assert _command(self.port, "SAVE") == b"+OK"

    def kill(self) -> None:
        """SIGKILL: whatever was not saved is lost."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGCONT)
                self.process.kill()
            self.process.wait(10)
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
