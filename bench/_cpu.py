"""Server CPU accounting by process *tree*, from /proc.

A process group is not enough: PostgreSQL's postmaster is started by
``pg_ctl`` in a session of its own (it is re-parented to init), and every
PostgreSQL backend calls ``setsid()`` too, so neither the embedded dicomcloud's
PostgreSQL nor a separate one would be counted by the process group of the
process that started it. Here every live process is charged to the nearest
*root* among its ancestors (itself included); each root is named (``server``,
``postgresql``, ``kafka``, …). A process's own user+system time plus that of
its reaped children (``cutime``/``cstime``) is counted, so exited PostgreSQL
backends still count through the postmaster.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU ticks incl. reaped children)."""
    out: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is state (field 3); ppid is field 4; utime..cstime fields 14..17
        out[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return out


def tree_cpu_seconds(roots: Mapping[str, Iterable[int | None]]) -> dict[str, float]:
    """CPU seconds per named set of root processes and all their live descendants."""
    tck = os.sysconf("SC_CLK_TCK")
    owner: dict[int, str] = {}
    for name, pids in roots.items():
        for pid in pids:
            if pid:
                owner[pid] = name
    table = _table()
    totals = dict.fromkeys(roots, 0)
    memo: dict[int, str | None] = {}
    for pid in table:
        chain = []
        cur: int | None = pid
        found: str | None = None
        while cur and cur in table:
            if cur in memo:
                found = memo[cur]
                break
            chain.append(cur)
            if cur in owner:
                found = owner[cur]
                break
            cur = table[cur][0]
        for c in chain:
            memo[c] = found
        if found is not None:
            totals[found] += table[pid][1]
    return {name: v / tck for name, v in totals.items()}


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid in ``pgdata/postmaster.pid`` if that process is alive."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def embedded_pgdata(data_dir: Path) -> Path:
    """Where ``dicomcloud up`` keeps its embedded cluster: ``<data-dir>/pg``, or the
    directory named in ``<data-dir>/pg.location`` (used when running as root below
    a directory others cannot traverse)."""
    loc = data_dir / "pg.location"
    try:
        return Path(loc.read_text().strip())
    except OSError:
        return data_dir / "pg"
