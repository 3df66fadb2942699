"""Is the process that started something still alive? A process is named by its host, its pid
and its start time (so that a pid the system handed out again is not taken for the old
process). The sweep marks trials of dead workers failed with it; the CLI marks its own dead
Dagster runs failed and frees the pool slots they held (docs/architecture.md, runs that die)."""

from __future__ import annotations

import os
import socket


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), or '' where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces and parentheses: count from the last ')'
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def started_at(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch (Linux), or None."""
    ticks = _start_time(pid)
    try:
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + int(ticks) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration):
        return None


def this_process() -> dict:
    """This process's identity, to record where it starts work."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def alive(pid: int, started: str = "") -> bool:
    """Whether process ``pid`` of this host runs, and is the one that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or _start_time(pid) in ("", started)


def dead_here(identity: dict) -> bool:
    """True when ``identity`` names a process of this host that is gone: :func:`this_process`'s
    record, or ``{host, pid, not_after}`` (a process that must have started by then; one with
    that pid started later is another process)."""
    if identity.get("host") != socket.gethostname() or not identity.get("pid"):
        return False
    pid = int(identity["pid"])
    if not alive(pid, str(identity.get("started", ""))):
        return True
    if identity.get("not_after") is not None:
        start = started_at(pid)
        return start is not None and start > float(identity["not_after"]) + 2.0
    return False
