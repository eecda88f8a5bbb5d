"""SIGINT/SIGTERM become a stop request, so stopping a run always leaves a checkpoint to resume from.

Under `handle_stop_signals` the first signal only records the request: training (which polls
`stop_requested` after every step) writes a checkpoint and stops, and the stage runner stops before the
next stage. A second signal raises KeyboardInterrupt at once, for when waiting is not wanted. Outside the
context manager nothing is installed and Python's own behaviour applies.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.errors import PipelineError

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class StopRequested(PipelineError):
    """The run stopped between stages because a stop signal arrived; finished stages are kept."""


@dataclass
class StopRequest:
    """The signal that asked the run to stop, or None; kept after the handlers are removed so callers can report it."""

    signal: int | None = None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


_current = StopRequest()


def stop_requested(step: int = 0) -> bool:
    """True once a stop signal arrived under `handle_stop_signals`; the `should_stop(step)` training polls."""
    return _current.signal is not None


def raise_if_stop_requested(before: str) -> None:
    """Stop at a safe point (between stages) when a stop signal arrived."""
    if _current.signal is not None:
        raise StopRequested(f"stopped before {before} on {_current.signal_name}; finished stages are kept")


@contextlib.contextmanager
def handle_stop_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Install the stop handlers for the duration of the block and restore the previous ones afterwards.

    Signal handlers can only be set from the main thread; elsewhere this yields a request that never fires.
    """
    global _current
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum: int, frame: object) -> None:
        if request.signal is not None:
            raise KeyboardInterrupt(f"second stop signal ({signal.Signals(signum).name})")
        request.signal = signum
        sys.stderr.write(
            f"\n{signal.Signals(signum).name} received: stopping after the current training step (with a checkpoint) "
            "or before the next stage; send it again to stop at once\n"
        )

    previous_handlers = {sig: signal.getsignal(sig) for sig in signals}
    previous_request = _current
    for sig in signals:
        signal.signal(sig, handle)
    _current = request
    try:
        yield request
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        _current = previous_request
