"""Latency, peak memory and measured energy of a denoiser callable on this device.

Latency: ``warmup`` untimed runs, then ``repeats`` timed runs (``perf_counter``); median and p95 reported, never
asserted on. Memory: the process's peak resident set (``VmHWM``) during construction, warm-up and runs above
the resident set before them, the peak reset through ``/proc/self/clear_refs`` (Linux; "n/a" elsewhere).
Energy: only with a real sensor (:mod:`edgespike.profile.sensors`), in ``trials`` trials; each measures the idle
power over ``idle_s`` seconds, then runs frames for at least ``min_s`` seconds while the sensor is sampled at its
own period (a power sensor) or read before and after (an energy counter). Per frame, per trial:

* **gross** = mean power while running x wall time / frames: what the whole device spent on each frame;
* **net** = (mean power while running - idle power) x wall time / frames: what running added above idle;
* **time to solution** = wall time / frames.

Gross is what a whole-device comparison needs (a runtime 10x slower pays 10x the idle floor); net isolates the
work. The medians over trials are reported with their spread (min and max). A power sensor's sample count is
the number of readings taken while running; an energy counter has none (it integrates in hardware): its
reads are reported as such. Without a sensor there is no measurement and the report says "estimated only".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgespike.profile.sensors import Sensor, SensorError


@dataclass
class Latency:
    median_s: float
    p95_s: float
    runs: int
    warmup: int
    peak_mem_mib: float | None


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def latency(fn, frame: np.ndarray, repeats: int = 5, warmup: int = 1, make=None):
    """Time ``fn(frame)``; see the module docstring.

    With ``make`` (a zero-argument constructor), ``fn = make()`` is built inside the measurement, so that memory
    allocated at load time counts, and ``(Latency, fn)`` is returned.
    """
    # Baseline before construction and warm-up: load-time arenas and first-call buffers belong to the runtime;
    # large numpy buffers are unmapped when freed, so earlier runtimes do not hide this one's peak.
    base = _rss_kib("VmRSS")
    can_reset = _reset_peak()
    if make is not None:
        fn = make()
    for _ in range(warmup):
        fn(frame)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(frame)
        times.append(time.perf_counter() - t0)
    peak = _rss_kib("VmHWM")
    mem = (peak - base) / 1024.0 if (can_reset and peak is not None and base is not None) else None
    lat = Latency(float(np.median(times)), float(np.percentile(times, 95)), repeats, warmup,
                  max(mem, 0.0) if mem is not None else None)
    return (lat, fn) if make is not None else lat


@dataclass
class Trial:
    """One trial: idle phase, then frames; energies in joules per frame."""

    frames: int
    seconds: float
    idle_w: float
    active_w: float
    samples: int  # power readings while running (0 for an energy counter)
    idle_samples: int
    gross_j: float
    net_j: float


@dataclass
class EnergyMeasurement:
    """Measured energy per frame over several trials (medians, spread as min and max)."""

    sensor: str
    method: str  # "power samples" or "energy counter"
    sample_period_s: float
    resolution: str
    trials: list[Trial]
    gross_j_per_frame: float
    net_j_per_frame: float
    gross_range_j: tuple[float, float]
    net_range_j: tuple[float, float]
    seconds_per_frame: float
    idle_w: float
    samples: int  # power readings while running, all trials (0 for a counter)
    counter_reads: int  # reads of an energy counter, all trials and phases (0 for a power sensor)


class _Sampler(threading.Thread):
    def __init__(self, sensor: Sensor):
        super().__init__(daemon=True)
        self.sensor, self.values, self.error = sensor, [], None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.values.append(self.sensor.read_watts())
            except SensorError as exc:
                self.error = exc
                return
            self._halt.wait(self.sensor.period_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _mean_power(sensor: Sensor, work, min_s: float, clock) -> tuple[float, int, float, int]:
    """Mean power (W) while ``work()`` is called repeatedly for at least ``min_s`` s; returns
    (watts, power samples or counter reads, seconds, calls)."""
    if sensor.kind == "energy":
        j0, t0 = sensor.read_joules(), clock()
        calls = 0
        while calls == 0 or clock() - t0 < min_s:
            work()
            calls += 1
        j1, t1 = sensor.read_joules(), clock()
        return (j1 - j0) / (t1 - t0), 2, t1 - t0, calls
    sampler = _Sampler(sensor)
    t0 = clock()
    sampler.start()
    calls = 0
    # at least two sensor periods, so a slow meter still yields a mean and not one sample
    while calls == 0 or clock() - t0 < max(min_s, 2 * sensor.period_s):
        work()
        calls += 1
    sampler.stop()
    t1 = clock()
    if sampler.error is not None:
        raise sampler.error
    if not sampler.values:
        raise SensorError(f"{sensor.name}: no sample during {t1 - t0:.2f} s")
    return float(np.mean(sampler.values)), len(sampler.values), t1 - t0, calls


def energy(fn, frame: np.ndarray, sensor: Sensor, idle_s: float = 3.0, min_s: float = 3.0, trials: int = 3,
           clock=time.perf_counter, idle=None) -> EnergyMeasurement:
    """Measured gross and net energy per frame of ``fn(frame)`` with ``sensor`` over ``trials`` trials.

    ``clock`` (seconds) and ``idle`` (one short idle wait, default a 50 ms sleep) are parameters so that tests
    can drive a fake sensor tree deterministically.
    """
    idle = idle or (lambda: time.sleep(min(0.05, idle_s)))
    counter = sensor.kind == "energy"
    out: list[Trial] = []
    reads = 0
    for _ in range(max(1, trials)):
        idle_w, n_idle, _, _ = _mean_power(sensor, idle, idle_s, clock)
        active_w, n, secs, calls = _mean_power(sensor, lambda: fn(frame), min_s, clock)
        reads += (n_idle + n) if counter else 0
        out.append(Trial(calls, secs, idle_w, active_w, 0 if counter else n, 0 if counter else n_idle,
                         active_w * secs / calls, (active_w - idle_w) * secs / calls))
    gross, net = [t.gross_j for t in out], [t.net_j for t in out]
    if counter:
        method, res = "energy counter", (f"counter read before and after each phase (its own update period is "
                                         f"about {sensor.period_s * 1e3:g} ms)")
    else:
        method, res = "power samples", f"one reading every {sensor.period_s:g} s"
    note = getattr(sensor, "note", "")
    return EnergyMeasurement(
        sensor.name, method, sensor.period_s, res + (f"; {note}" if note else ""), out, float(np.median(gross)),
        float(np.median(net)), (min(gross), max(gross)), (min(net), max(net)),
        float(np.median([t.seconds / t.frames for t in out])), float(np.median([t.idle_w for t in out])),
        sum(t.samples for t in out), reads)
