"""Training processes die with the process that launched them (Linux).

torchrun starts each worker in a session of its own, and nothing ties torchrun to the process
that started it: a launcher killed with SIGKILL (the Dagster step, the sweep's command), or a
killed torchrun, left the workers training as orphans. The kernel's parent-death signal
(``prctl(PR_SET_PDEATHSIG)``) ties each to its parent:

- torchrun is started through this module, ``python -m spark_pipeline.training.lifeline
  torchrun ...`` (:func:`spark_pipeline.training.launch.torchrun_command`): when the launcher
  names itself in ``SPARK_LAUNCHER_PID``, the signal is set to SIGTERM and torchrun is then
  executed in this same process (the setting survives ``exec``). A dead launcher makes torchrun
  stop its workers as a scheduler's SIGTERM does, within the grace period. Without the
  variable (a command typed in a shell) torchrun is not tied to its parent.
- each worker ties itself to torchrun first thing at start-up (``training/__main__.py``): a dead
  torchrun makes its workers save an emergency checkpoint and exit.

The parent may die before the call is made; the process then already has another parent. So
the parent's pid is compared with the one recorded before this process started
(``SPARK_LAUNCHER_PID``; ``SPARK_TORCHRUN_PID``, which this module sets for torchrun's
workers), and the process stops at once when they differ. The signal follows the *thread*
that started the process: launchers start torchrun from the thread that then waits for it
(Dagster Pipes' subprocess client does), so that thread lives as long as the run.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

LAUNCHER_PID = "SPARK_LAUNCHER_PID"
TORCHRUN_PID = "SPARK_TORCHRUN_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies; ``parent`` is the
    parent's pid as recorded before this process started. When the parent is already gone,
    ``sig`` is sent now. False where the call does not exist (not Linux): nothing is tied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:
        print(f"process {os.getpid()}: its parent {parent} is gone; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), sig)
    return True


def tie_to_torchrun() -> bool:
    """In a worker started by torchrun: SIGTERM when torchrun dies. The worker's handler then
    stops the run with an emergency checkpoint; before the handler is installed, it ends the
    process. Outside torchrun, nothing."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    return die_with_parent(int(os.environ.get(TORCHRUN_PID) or os.getppid()))


def main(argv: list[str]) -> None:
    """Run ``argv`` (torchrun) in this process, tied to the launcher named by
    ``SPARK_LAUNCHER_PID`` when it is set, with this pid in ``SPARK_TORCHRUN_PID`` for its workers."""
    if not argv:
        sys.exit("usage: python -m spark_pipeline.training.lifeline COMMAND [ARGS...]")
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher:
        die_with_parent(int(launcher))
    os.environ[TORCHRUN_PID] = str(os.getpid())
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
