"""Latency, peak memory and measured energy of a denoiser callable on this device.

Latency: ``warmup`` untimed runs, then ``repeats`` timed runs (``perf_counter``); median and p95 reported, never
asserted on. Memory: the process's peak resident set (``VmHWM``) during construction, warm-up and runs above
the resident set before them, the peak reset through ``/proc/self/clear_refs`` (Linux; "n/a" elsewhere).
Energy: only with a real sensor (:mod:`edgespike.profile.sensors`): the idle power is measured first over
``idle_s`` seconds, then the frames run while the sensor is sampled at its own period; energy per frame =
(mean power while running - idle power) x wall time / frames (for an energy counter: counter difference minus
idle power x time). Without a sensor there is no measurement and the report says "estimated only".
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
class EnergyMeasurement:
    sensor: str
    sample_period_s: float
    samples: int
    idle_w: float
    active_w: float
    joules_per_frame: float
    frames: int
    seconds: float


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


def _mean_power(sensor: Sensor, work, min_s: float) -> tuple[float, int, float, int]:
    """Mean power (W) while ``work()`` is called repeatedly for at least ``min_s`` s; returns
    (watts, samples, seconds, calls)."""
    if sensor.kind == "energy":
        j0, t0 = sensor.read_joules(), time.perf_counter()
        calls = 0
        while calls == 0 or time.perf_counter() - t0 < min_s:
            work()
            calls += 1
        j1, t1 = sensor.read_joules(), time.perf_counter()
        return (j1 - j0) / (t1 - t0), 2, t1 - t0, calls
    sampler = _Sampler(sensor)
    t0 = time.perf_counter()
    sampler.start()
    calls = 0
    # at least two sensor periods, so a slow meter still yields a mean and not one sample
    while calls == 0 or time.perf_counter() - t0 < max(min_s, 2 * sensor.period_s):
        work()
        calls += 1
    sampler.stop()
    t1 = time.perf_counter()
    if sampler.error is not None:
        raise sampler.error
    if not sampler.values:
        raise SensorError(f"{sensor.name}: no sample during {t1 - t0:.2f} s")
    return float(np.mean(sampler.values)), len(sampler.values), t1 - t0, calls


def energy(fn, frame: np.ndarray, sensor: Sensor, idle_s: float = 3.0, min_s: float = 3.0,
           ) -> EnergyMeasurement:
    """Measured energy per frame of ``fn(frame)`` with ``sensor``, idle baseline subtracted."""
    idle_w, _, _, _ = _mean_power(sensor, lambda: time.sleep(min(0.05, idle_s)), idle_s)
    active_w, n, secs, calls = _mean_power(sensor, lambda: fn(frame), min_s)
    return EnergyMeasurement(sensor.name, sensor.period_s, n, idle_w, active_w,
                             (active_w - idle_w) * secs / calls, calls, secs)
