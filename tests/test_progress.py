"""Feedback on long steps (issue 19): kernel build, rtl sim, eval and fpga build say that they are working.

Nothing here asserts how long anything takes: the slow step is an event the test releases once the notice is out.
"""

from __future__ import annotations

import io
import sys
import threading

from edgespike import progress


class Log(io.StringIO):
    """A stderr that is not a terminal, and that signals each write."""

    def __init__(self) -> None:
        super().__init__()
        self.wrote = threading.Event()

    def write(self, s: str) -> int:
        n = super().write(s)
        self.wrote.set()
        return n


def test_a_slow_step_is_announced_and_timed():
    log = Log()
    with progress.notice_if_slow("compiling the C kernel", after=0.0, stream=log):
        assert log.wrote.wait(30)  # the step "takes" until the notice is out
    lines = log.getvalue().splitlines()
    assert lines[0] == "edgespike: compiling the C kernel ..."
    assert lines[1].startswith("edgespike: compiling the C kernel: done in ")


def test_a_quick_step_prints_nothing():
    log = Log()
    with progress.notice_if_slow("compiling the C kernel", after=600.0, stream=log):
        pass
    assert log.getvalue() == ""


def test_prepare_kernel_announces_the_first_build(monkeypatch):
    from edgespike import kernels

    log = Log()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.setattr(kernels, "load", lambda: log.wrote.wait(30))  # the "build" lasts until the notice is out
    progress.prepare_kernel()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("edgespike: compiling the C kernel (first use on this machine only")
    assert "done in" in lines[1]
    quiet = Log()
    monkeypatch.setattr(sys, "stderr", quiet)
    progress.prepare_kernel("numpy")  # no kernel needed: nothing to build, nothing printed
    assert quiet.getvalue() == ""


def test_heartbeat_shows_a_long_call_is_alive():
    log = Log()
    with progress.heartbeat("rtl sim: 4x4 tile", expected=150, every=0.01, stream=log):
        assert log.wrote.wait(30)
    first = log.getvalue().splitlines()[0]
    assert first.startswith("rtl sim: 4x4 tile: running for ") and first.endswith("(about 150 s expected)")


def test_progress_lines_in_a_log():
    log = Log()
    bar = progress.Progress("eval", 68, "images", every=0.0, stream=log)
    for done in (1, 34, 68):
        bar.update(done)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("eval: 1 / 68 images (1 %)") and lines[1].startswith("eval: 34 / 68 images (50 %)")
    assert lines[2].startswith("eval: 68 / 68 images (100 %)")
    quiet = Log()
    progress.Progress("eval", 68, "images", enabled=False, stream=quiet).update(3, force=True)
    assert quiet.getvalue() == ""


def test_fpga_build_reports_its_stages_in_a_log(monkeypatch):
    """`edgespike fpga build` passes stderr as the progress stream, so a log (not a terminal) gets each stage."""
    import pytest

    pytest.importorskip("amaranth")
    import edgespike.fpga.build as build_module
    from edgespike.commands import fpga

    seen = {}

    def fake_build(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(build_module, "build", fake_build)
    args = type("A", (), dict(fpga_command="build", board="icebreaker", model=None, out=None, tile=None,
                               lanes=None, baud=115200, link="uart", json=False, plan_only=False, clock=None,
                               logic_budget=None, seed=None, tries=None, replan=False,
                               plan_from=None))()
    with pytest.raises(SystemExit):
        fpga.run(args)
    assert seen["progress"] is sys.stderr
