"""Stopping on SIGTERM or Ctrl-C between steps, so the saved state is that of whole steps."""
from __future__ import annotations

import signal
import threading

NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


class StopSignals:
    """While entered, SIGTERM and Ctrl-C only set a flag that the loop reads between steps; a
    second Ctrl-C stops at once (KeyboardInterrupt). The previous handlers come back on exit.
    Outside the main thread Python cannot install handlers, so nothing is installed."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self) -> "StopSignals":
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

    def reason(self) -> str:
        """What stopped this process; another rank's signal when this one got none."""
        return NAMES.get(self.signum, "stop on another rank")
