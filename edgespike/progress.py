"""Feedback for work that takes more than a few seconds: a progress line, and a notice for one-off slow steps.

On a terminal the line is rewritten in place; in a log (stderr not a terminal) one line is written every few
seconds, so a CI log or ``2> run.log`` shows that the work is moving without scrolling thousands of lines.
Everything goes to stderr: stdout stays the command's result.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time


class Progress:
    """A progress line for ``what``: ``update(done)`` as the work moves, ``close()`` at the end.

    Parameters
    ----------
    what
        What is being done, e.g. ``"rtl sim: 4x4 tile"``.
    total
        The amount of work, in ``unit`` (None: unknown; no percentage is shown).
    unit
        The unit of ``done`` and ``total``, e.g. ``"cycles"``.
    enabled
        False makes every method a no-op (``--quiet``, ``--json``).
    every
        Seconds between lines when stderr is not a terminal.
    stream
        Where to write (default: ``sys.stderr`` at the time of the call).
    """

    def __init__(self, what: str, total: float | None = None, unit: str = "", enabled: bool = True,
                 every: float = 5.0, stream=None) -> None:
        self.what, self.total, self.unit, self.enabled, self.every = what, total, unit, enabled, every
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.width = 0

    def text(self, done: float) -> str:
        """The progress line for ``done`` units of work."""
        elapsed = time.monotonic() - self.start
        line = f"{self.what}: {done:,.0f}"
        if self.total:
            frac = min(1.0, done / self.total)
            line += f" / {self.total:,.0f} {self.unit} ({100 * frac:.0f} %)".rstrip()
            if 0 < frac < 1 and elapsed > 2:
                line += f", about {elapsed * (1 - frac) / frac:.0f} s left"
        elif self.unit:
            line += f" {self.unit}"
        return f"{line}, {elapsed:.0f} s"

    def update(self, done: float, force: bool = False) -> None:
        """Show that ``done`` units are done (at most 10 times a second on a terminal, else every ``every`` s)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < (0.1 if self.tty else self.every):
            return
        self.last = now
        line = self.text(done)
        if self.tty:
            self.stream.write("\r" + line + " " * max(0, self.width - len(line)))
            self.width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line on a terminal, so what is printed next starts on its own line."""
        if self.enabled and self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


@contextlib.contextmanager
def notice_if_slow(message: str, after: float = 1.0, enabled: bool = True, stream=None):
    """Print ``message`` (and, at the end, how long it took) if the block runs longer than ``after`` seconds.

    For a step that is usually instant but sometimes slow, such as the first use of the compiled kernel, which
    builds it: silence when it is quick, a line saying what is happening when it is not.
    """
    stream = stream or sys.stderr
    start = time.monotonic()
    shown = threading.Event()

    def show() -> None:
        shown.set()
        stream.write(f"edgespike: {message} ...\n")
        stream.flush()

    timer = threading.Timer(after, show)
    timer.daemon = True
    if enabled:
        timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if shown.is_set():
            stream.write(f"edgespike: {message}: done in {time.monotonic() - start:.1f} s\n")
            stream.flush()


def prepare_kernel(backend: str = "auto", enabled: bool = True) -> None:
    """Build the compiled kernel now, with a notice if that takes a while (the first use on a machine: ~10 s).

    Commands call this before loading a model, so the build is not a silent pause inside the first frame, and a
    kernel that cannot be built is said in one line on stderr (why, and that the slow numpy fallback runs).
    ``backend="numpy"`` needs no kernel.
    """
    if backend == "numpy":
        return
    from edgespike import kernels

    with notice_if_slow("compiling the C kernel (first use on this machine only, about 10 s)", enabled=enabled):
        lib = kernels.load()
    # Never silently slow: one line, even when quiet (and no Python warning repeating it)
    if lib is None and backend == "auto":
        sys.stderr.write(f"edgespike: {kernels.fallback_notice()}\n")
        sys.stderr.flush()
        kernels.mark_notified()


@contextlib.contextmanager
def heartbeat(what: str, expected: float | None = None, every: float = 5.0, enabled: bool = True, stream=None):
    """While the block runs, show every ``every`` seconds that ``what`` is still running, and for how long.

    For work that cannot report its own progress (a simulator inside one long call): the elapsed time against an
    ``expected`` duration in seconds (an estimate) tells the user it is alive and about how long is left. On a
    terminal the line is rewritten in place every second; in a log one line is written every ``every`` seconds.
    """
    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    start = time.monotonic()
    stop = threading.Event()
    width = 0

    def beat() -> None:
        nonlocal width
        while not stop.wait(1.0 if tty else every):
            text = f"{what}: running for {time.monotonic() - start:.0f} s"
            if expected:
                text += f" (about {expected:.0f} s expected)"
            stream.write(f"\r{text}" if tty else f"{text}\n")
            width = len(text)
            stream.flush()

    thread = threading.Thread(target=beat, name="edgespike-heartbeat", daemon=True)
    if enabled:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if enabled:
            thread.join()
            if tty and width:
                stream.write("\r" + " " * width + "\r")
                stream.flush()
