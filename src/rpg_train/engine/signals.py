"""Stopping on SIGTERM, SIGUSR1/2 or Ctrl-C between steps, so the saved state is that of whole
steps; then passing the signal on to whoever handled it before (submitit's requeue)."""
from __future__ import annotations

import signal
import threading

# SIGUSR1/SIGUSR2: what SLURM sends before a job's time limit (sbatch --signal; submitit's
# default is USR2)
NAMES: dict[int, str] = {signal.SIGTERM: "SIGTERM", signal.SIGUSR1: "SIGUSR1",
                         signal.SIGUSR2: "SIGUSR2", signal.SIGINT: "Ctrl-C"}


class Interrupted(Exception):
    """A stop signal ended training (on this rank or another: all ranks agree on `signum`,
    the largest number any got); the run saved last.pt first. `own` is the signal this
    process got itself, if any: the one to pass on (SLURM sends its warning to every task,
    and it must reach submitit's handler even when another rank got a SIGTERM)."""

    def __init__(self, signum: int, own: int | None = None):
        self.signum, self.own = signum, own
        super().__init__(NAMES.get(signum, f"signal {signum}"))


class StopSignals:
    """While entered, the signals in NAMES only set a flag that the loop reads between steps; a
    second Ctrl-C stops at once (KeyboardInterrupt). The previous handlers come back on exit.
    Outside the main thread Python cannot install handlers, so nothing is installed."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in NAMES}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None


def pass_on(signum: int) -> None:
    """Call the Python handler that `signum` had before training (submitit's, which requeues
    the job on rank 0), now that last.pt is saved. Default handlers, and Ctrl-C's, are left
    alone: the caller exits with its own code."""
    if signum == signal.SIGINT or signum not in NAMES:
        return
    handler = signal.getsignal(signum)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signum, None)
