"""CPU-heavy work of a request (decode, window, encode) on every core.

One Python process holds one GIL: rendering in threads uses one core however
many requests wait. The server process therefore keeps a pool of worker
processes (``forkserver``: no fork of a process that runs threads) for the
rendering functions, which take a path and options and return bytes. With
``workers=0`` work runs in a thread of this process.
Errors of the tree in ``errors.py`` cross the process boundary unchanged.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_pool: ProcessPoolExecutor | None = None
_workers = 0
_starting = threading.Lock()


def _warm() -> None:
    """Import what rendering needs (in each worker, as the pool starts)."""
    import dicomcloud.domain.render
    import dicomcloud.entrypoints.http.rendered  # noqa: F401


def configure(workers: int) -> None:
    """Use ``workers`` processes from the first request on (0: threads of this process)."""
    global _workers
    _workers = workers


def stop() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


def _started() -> ProcessPoolExecutor | None:
    global _pool
    with _starting:  # also called from the threads that stream a multipart answer
        if _pool is None and _workers > 0:  # started on first use: a server that never renders pays nothing
            _pool = ProcessPoolExecutor(_workers, mp_context=multiprocessing.get_context("forkserver"))
            for _ in range(_workers):
                _pool.submit(_warm)
        return _pool


async def run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker process (a thread when there is no pool); ``fn`` must be importable."""
    pool = _started()
    if pool is None:
        return await asyncio.to_thread(fn, *args)
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


def call(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker process, waited for; for code already in a worker thread
    (a sync iterator Starlette streams). Without a pool, in the calling thread."""
    pool = _started()
    if pool is None:
        return fn(*args)
    return pool.submit(fn, *args).result()
