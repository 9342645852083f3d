"""Ctrl-C, honoured at the next batch: a SIGINT handler that records the request.

Python's own SIGINT handling raises :class:`KeyboardInterrupt` wherever the main thread happens
to be when the signal comes -- inside a garbage-collection callback it is printed as
"Exception ignored" and swallowed, and the command runs on to the end and exits 0. While
:func:`stop_at_next_batch` holds (``featbench``'s CLI, around every command), SIGINT only
records the request; every long loop (align, extract, the training loop, predict) calls
:func:`check` between two batches, which raises :class:`KeyboardInterrupt` there -- at a point
where what was written is whole and a rerun resumes -- and the CLI exits with status 130. A
second Ctrl-C stops at once, as before.
"""

import contextlib
import signal
import sys
import threading

_requested = threading.Event()


def requested():
    """Whether a stop was asked for (Ctrl-C) and not yet acted on."""
    return _requested.is_set()


def check():
    """Raise :class:`KeyboardInterrupt` if Ctrl-C was pressed; call it between two batches."""
    if _requested.is_set():
        raise KeyboardInterrupt("stopped at a batch boundary (Ctrl-C)")


def _on_sigint(signum, frame):
    if _requested.is_set():  # the second Ctrl-C: stop where it stands
        raise KeyboardInterrupt
    _requested.set()
    print("featbench: stopping after the current batch (Ctrl-C again to stop at once)",
          file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_at_next_batch():
    """Install the recording SIGINT handler for the block (main thread only; elsewhere, or
    where SIGINT is ignored, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # a background job started with SIGINT ignored stays so
        yield
        return
    _requested.clear()
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def between(items):
    """Yield ``items``, calling :func:`check` before each next one is taken (a loop over jobs,
    batches or results that stops at the next one after Ctrl-C)."""
    for item in items:
        check()
        yield item
    check()
