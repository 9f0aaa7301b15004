"""SIGTERM and SIGINT become a request to stop after the current step, with a checkpoint.

A cluster scheduler preempting a job sends SIGTERM and waits a grace period; Ctrl-C sends
SIGINT. Either way the trainer finishes the step it is in, saves, and exits with 128 +
the signal number (143, 130): the shell's code for "ended by a signal", so a wrapper
script sees that training did not complete, and can rerun it with --resume. A second
Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Records the first stop signal; install() in the main thread, restore() when done."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now, without saving
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @staticmethod
    def name(signum: int) -> str:
        return signal.Signals(signum).name

    def __enter__(self) -> "StopRequest":
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
