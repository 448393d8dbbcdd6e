"""The live loop: a capture thread, a bounded frame buffer, the denoiser, the sinks, stats and a clean stop.

Capture and compute run in parallel. Between them sits a buffer of ``queue`` frames (1 or 2). For a live source
(a camera, a stream, a paced demo) a new frame that finds the buffer full evicts the oldest one, which is counted
as dropped: a slow model shows recent frames with bounded latency instead of an ever-growing queue. For files the
capture thread waits instead, so every frame of a file is denoised.

Stopping: Ctrl-C (SIGINT) and SIGTERM set a flag; the frame in progress completes, the sinks are closed (the
output file is finalised) and the summary is printed. A second Ctrl-C interrupts the frame in progress, and the
sinks are still closed. A live source that fails to deliver is retried ``retries`` times (reopened between
tries) and then reported as lost, with the same clean ending.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from edgespike.errors import UserError
from edgespike.frames import from_luma, to_luma
from edgespike.live.backends import energy_estimator, energy_joules, stats_dict
from edgespike.live.sinks import Result, StopRun
from edgespike.live.sources import Frame, ReadFailed, Source

COLORS = ("luma", "per-channel", "gray")


# ------------------------------------------------------------------------------------------------- bounded buffer



def joules(value: float) -> str:
    """An energy in joules with three significant figures and an SI prefix: 5.12e-05 -> '51.2 uJ'."""
    for factor, unit in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "uJ"), (1e-9, "nJ")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {unit}"
    return f"{value / 1e-12:.3g} pJ"

class FrameBuffer:
    """At most ``size`` frames between capture and compute; ``put`` drops the oldest or waits, by policy."""

    def __init__(self, size: int) -> None:
        self.items: collections.deque = collections.deque()
        self.size = size
        self.cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, item, drop: bool, stop: threading.Event) -> bool:
        """Add ``item``. With ``drop`` evict the oldest frame if full; else wait for room (False if stopped)."""
        with self.cond:
            while len(self.items) >= self.size:
                if drop:
                    old = self.items.popleft()
                    if isinstance(old, Frame):
                        self.dropped += 1
                    break
                if stop.is_set() or self.closed:
                    return False
                self.cond.wait(0.1)
            self.items.append(item)
            self.cond.notify_all()
            return True

    def wait_room(self, stop: threading.Event) -> bool:
        """Wait until a frame fits (False if stopped): a file source reads only then, so no frame goes stale
        in the capture thread's hands while the buffer is full."""
        with self.cond:
            while len(self.items) >= self.size:
                if stop.is_set() or self.closed:
                    return False
                self.cond.wait(0.1)
            return True

    def put_end(self, item) -> None:
        """Queue an end marker regardless of room, so the main thread learns at once why capture ended."""
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def get(self, timeout: float):
        """The oldest item, or None after ``timeout`` seconds."""
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            if not self.items:
                return None
            item = self.items.popleft()
            self.cond.notify_all()
            return item


class _End:
    """Queued by the capture thread when the source ended (``error`` None) or failed for good."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def capture_loop(source: Source, buf: FrameBuffer, stop: threading.Event, retries: int, retry_delay: float,
                 counters: dict) -> None:
    """Read frames until the source ends or ``stop``; runs in its own thread."""
    failures = 0
    try:
        while not stop.is_set():
            if not source.live and not buf.wait_room(stop):
                return
            try:
                frame = source.read()
            except ReadFailed as exc:
                failures += 1
                counters["read_failures"] += 1
                if failures > retries:
                    raise UserError(f"{source.description}: stopped delivering frames ({exc}); gave up after "
                                    f"{retries} retr{'y' if retries == 1 else 'ies'}") from None
                if stop.wait(retry_delay):
                    break
                try:
                    source.reopen()
                except UserError:
                    pass  # still gone: the next read fails and counts as the next retry
                continue
            failures = 0
            if frame is None:
                buf.put_end(_End())
                return
            counters["captured"] += 1
            if not buf.put(frame, drop=source.live, stop=stop):
                return
    except BaseException as exc:  # report anything to the main thread: it owns the exit path
        buf.put_end(_End(exc))


# ------------------------------------------------------------------------------------------------------- statistics


class Histogram:
    """Log-spaced histogram (1 % bins from 1 us to ~3 h): percentiles over a whole run in constant memory."""

    LO, RATIO, BINS = 1e-6, 1.01, 2200

    def __init__(self) -> None:
        self.counts = np.zeros(self.BINS, np.int64)
        self.n, self.total, self.max = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        i = 0 if x <= self.LO else min(self.BINS - 1, int(math.log(x / self.LO, self.RATIO)) + 1)
        self.counts[i] += 1
        self.n += 1
        self.total += x
        self.max = max(self.max, x)

    def percentile(self, q: float) -> float:
        if not self.n:
            return float("nan")
        i = int(np.searchsorted(np.cumsum(self.counts), q / 100 * self.n))
        return min(self.max, self.LO * self.RATIO ** i)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")


def rss_bytes() -> int | None:
    """Resident set size of this process now (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


@dataclass
class Summary:
    """What a run did, for the table printed at the end (and for tests)."""

    source: str = ""
    model: str = ""
    backend: str = ""
    sinks: list[str] = field(default_factory=list)
    processed: int = 0
    captured: int = 0
    dropped: int = 0
    read_failures: int = 0
    wall: float = 0.0
    latency: Histogram = field(default_factory=Histogram)
    compute: Histogram = field(default_factory=Histogram)
    spike_rate: float = 0.0
    synaptic_ops: float = 0.0
    macs: float = 0.0
    energy: float | None = None
    ann_energy: float | None = None
    psnr_noisy: float | None = None
    psnr_denoised: float | None = None
    rss_start: int | None = None
    rss_first: int | None = None
    rss_end: int | None = None
    members: dict[str, int] = field(default_factory=dict)  # a model set: frames per member that ran
    stop_reason: str = ""
    error: BaseException | None = None

    def table(self) -> str:
        def ms(h: Histogram, q=None) -> str:
            v = h.mean if q is None else h.percentile(q)
            return "-" if not h.n else f"{v * 1e3:.1f} ms"

        n = max(self.processed, 1)
        rows = [
            ("source", self.source),
            ("model", self.model or "-"),
            ("backend", self.backend),
            ("outputs", ", ".join(self.sinks) or "none (pass -o FILE, --serve or --window)"),
            ("ended", self.stop_reason),
            ("frames", f"{self.processed} denoised, {self.captured} captured, {self.dropped} dropped"
             + (f", {self.read_failures} failed reads" if self.read_failures else "")),
            *([("networks", ", ".join(f"{k} on {v} frame(s)" for k, v in self.members.items())
                + " (the set's members, chosen by each frame's noise estimate)")] if self.members else []),
            ("wall time", f"{self.wall:.2f} s ({self.processed / self.wall:.2f} frames/s)" if self.wall > 0 else "-"),
            ("latency", f"mean {ms(self.latency)}, p50 {ms(self.latency, 50)}, p95 {ms(self.latency, 95)}, "
             f"max {self.latency.max * 1e3:.1f} ms" if self.latency.n else "-"),
            ("compute", f"mean {ms(self.compute)}, p95 {ms(self.compute, 95)} per frame"),
            ("spikes", f"{self.spike_rate / n:.4f} per neuron per timestep (mean)"),
            ("synaptic ops", f"{self.synaptic_ops / n:,.0f} per frame (mean)"),
            ("dense MACs", f"{self.macs / n:,.0f} per frame (mean)"),
        ]
        if self.energy is not None:
            text = f"{joules(self.energy / n)} per frame (edgespike.profile estimate)"
            if self.ann_energy:
                text += f"; ANN twin {joules(self.ann_energy / n)} (SNN/ANN {self.energy / self.ann_energy:.2f})"
            rows.append(("energy", text))
        if self.psnr_noisy is not None:
            rows.append(("PSNR", f"noisy {self.psnr_noisy / n:.2f} dB -> denoised {self.psnr_denoised / n:.2f} dB "
                         "(mean over frames, against the clean demo frame)"))
        if self.rss_start is not None:
            mib = [f"{x / 2**20:.1f}" if x is not None else "?" for x in (self.rss_start, self.rss_first, self.rss_end)]
            rows.append(("memory (RSS)", f"start {mib[0]} MiB, after frame 1 {mib[1]} MiB, end {mib[2]} MiB"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(["edgespike run summary"] + [f"  {k:<{width}}  {v}" for k, v in rows])


# -------------------------------------------------------------------------------------------------------- the loop


@dataclass
class RunOptions:
    frames: int | None = None
    color: str = "luma"
    queue: int = 1
    retries: int = 3
    retry_delay: float = 0.5
    stall_timeout: float = 10.0
    status: str = "auto"  # "auto" (a live line on a terminal, a line every 5 s otherwise), "off"
    status_stream: object = None
    model_label: str = ""  # the model file and its name, for the summary (the command may have chosen it)


class Processor:
    """Colour policy around the backend: luma (chroma passed through), per channel, or grey output."""

    def __init__(self, backend, color: str) -> None:
        if color not in COLORS:
            raise UserError(f"unknown --color {color!r}: choose one of {', '.join(COLORS)}")
        self.backend, self.color = backend, color

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict, list]:
        """Returns (noisy as shown, denoised, stats dict summed over planes, the backend's Stats objects)."""
        if img.ndim == 2:
            out, st = self.backend.denoise(img)
            return img, out, stats_dict(st), [st]
        if self.color == "gray":
            y = to_luma(img)[0]
            out, st = self.backend.denoise(y)
            return y, out, stats_dict(st), [st]
        if self.color == "luma":
            y, cb, cr = to_luma(img)
            out, st = self.backend.denoise(y)
            return img, from_luma(out, cb, cr), stats_dict(st), [st]
        planes, total, raw = [], {}, []
        for c in range(3):
            out, st = self.backend.denoise(np.ascontiguousarray(img[..., c]))
            planes.append(out)
            raw.append(st)
            for k, v in stats_dict(st).items():
                if k not in ("sigma_estimate", "member"):  # per plane; a sum would mean nothing
                    total[k] = total.get(k, 0) + v
        if "spike_rate" in total:
            total["spike_rate"] /= 3  # the three planes have the same neuron count: the mean is the rate
        return img, np.stack(planes, axis=-1), total, raw


class Status:
    """The live status line: rewritten in place on a terminal, one line every few seconds in a log."""

    def __init__(self, mode: str, stream) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.mode = mode
        self.last = 0.0
        self.width = 0

    def show(self, text: str, force: bool = False) -> None:
        if self.mode == "off":
            return
        now = time.monotonic()
        if self.tty:
            if now - self.last < 0.1 and not force:
                return
            pad = max(0, self.width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self.width = len(text)
        else:
            if now - self.last < 5.0 and not force:
                return
            self.stream.write(text + "\n")
        self.stream.flush()
        self.last = now

    def end(self) -> None:
        if self.mode != "off" and self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()


def status_text(r: dict) -> str:
    parts = [f"frame {r['frame']}", f"{r['latency_ms']:.1f} ms latency", f"{r['fps']:.1f} fps"]
    if "member" in r:  # a model set: the frame's noise estimate and the member it chose
        parts.append(f"noise ~{r['sigma_estimate']:.1f}: {r['member']}")
    if "spike_rate" in r:
        parts.append(f"{r['spike_rate']:.3f} spk/neuron/step")
    if "synaptic_ops" in r:
        parts.append(f"{r['synaptic_ops'] / 1e6:.2f} M synops")
    if "energy_uj" in r:
        parts.append(f"{joules(r['energy_uj'] * 1e-6)} est.")
    parts.append(f"{r['dropped']} dropped")
    return " | ".join(parts)


class _Signals:
    """SIGINT/SIGTERM -> a stop flag while the run is active (main thread only); a second SIGINT interrupts."""

    def __init__(self, stop: threading.Event, reasons: list[str]) -> None:
        self.stop, self.reasons, self.saved = stop, reasons, {}

    def _handler(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop the frame in progress too
        self.reasons.append(f"stopped by {name}" + (" (Ctrl-C)" if signum == signal.SIGINT else ""))
        self.stop.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self.saved.items():
            signal.signal(sig, h)


def run_pipeline(source: Source, backend, sinks: list, opts: RunOptions) -> Summary:
    """Run until the source ends, ``opts.frames`` are done, a stop is requested or something fails.

    Never raises for run-time failures: they are returned in ``Summary.error`` after every sink was closed, so the
    caller prints the summary and then the one-line error.
    """
    summary = Summary(rss_start=rss_bytes(), backend=getattr(backend, "label", "?"), model=opts.model_label)
    stop = threading.Event()
    reasons: list[str] = []
    process = Processor(backend, opts.color)
    estimate = energy_estimator()
    status = Status(opts.status, opts.status_stream)
    buf = FrameBuffer(max(1, opts.queue))
    counters = {"captured": 0, "read_failures": 0}
    thread = None
    t_start = time.perf_counter()
    recent: collections.deque = collections.deque(maxlen=30)  # completion times for the moving fps
    try:
        with _Signals(stop, reasons):
            source.open()
            summary.source = source.description
            summary.sinks = [getattr(s, "description", type(s).__name__) for s in sinks]
            thread = threading.Thread(target=capture_loop, name="edgespike-capture", daemon=True,
                                      args=(source, buf, stop, opts.retries, opts.retry_delay, counters))
            thread.start()
            t_start = time.perf_counter()
            last_frame_at = time.monotonic()
            while not stop.is_set():
                if opts.frames is not None and summary.processed >= opts.frames:
                    reasons.append(f"{opts.frames} frames done")
                    break
                item = buf.get(timeout=0.2)
                if item is None:
                    if source.live and time.monotonic() - last_frame_at > opts.stall_timeout:
                        raise UserError(f"{source.description}: no frame for {opts.stall_timeout:g} s (camera "
                                        "stalled or disconnected)")
                    continue
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    reasons.append("end of source")
                    break
                last_frame_at = time.monotonic()
                record = _process(item, process, estimate, getattr(backend, "model", None), summary, buf, recent,
                                  t_start)
                result = Result(noisy=record.pop("_noisy"), denoised=record.pop("_denoised"), record=record,
                                status=[status_text(record), summary.source, summary.backend])
                for sink in sinks:
                    sink.write(result)
                summary.latency.add(record["latency_ms"] / 1e3)
                status.show(status_text(record))
                if summary.processed == 1:
                    summary.rss_first = rss_bytes()
    except StopRun as exc:
        reasons.append(f"stopped: {exc}")
    except KeyboardInterrupt:
        reasons.append("interrupted (second Ctrl-C)")
    except Exception as exc:  # the caller reports it after the summary; sinks are closed below first
        summary.error = exc
        reasons.append("failed")
    finally:
        stop.set()
        with buf.cond:
            buf.closed = True
            buf.cond.notify_all()
        if thread is not None:
            thread.join(timeout=max(2.0, opts.retry_delay * 2))
        summary.wall = time.perf_counter() - t_start
        status.end()
        for sink in sinks:  # every sink, whatever happened: this is what makes the outputs complete
            try:
                sink.close()
            except Exception as exc:
                summary.error = summary.error or exc
        if thread is None or not thread.is_alive():  # never close a device under a thread still inside read()
            try:
                source.close()
            except Exception:
                pass
        try:
            backend.close()
        except Exception:
            pass
        summary.captured = counters["captured"]
        summary.read_failures = counters["read_failures"]
        summary.dropped = buf.dropped
        summary.rss_end = rss_bytes()
        summary.stop_reason = reasons[0] if reasons else "stopped"
    return summary


def _network(model, stats):
    """The network behind ``stats``: for a model set, the member that ran on that frame."""
    member = getattr(stats, "member", None)
    return model.member_named(member).model if member is not None else model


def _padded(shape: tuple[int, int], net) -> tuple[int, int]:
    """The frame's size as the runtime counts its spikes: padded to the network's size multiple."""
    m = net.size_multiple
    return -(-shape[0] // m) * m, -(-shape[1] // m) * m


def _process(frame: Frame, process: Processor, estimate, model, summary: Summary, buf: FrameBuffer,
             recent: collections.deque, t_start: float) -> dict:
    t0 = time.perf_counter()
    noisy, denoised, st, raw = process(frame.image)
    now = time.perf_counter()
    compute = now - t0
    recent.append(now)
    fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
    summary.processed += 1
    summary.compute.add(compute)
    h, w = frame.image.shape[:2]
    record = {"frame": summary.processed - 1, "source_frame": frame.index, "t": round(now - t_start, 6),
              "width": w, "height": h, "latency_ms": round((now - frame.t_capture) * 1e3, 3),
              "compute_ms": round(compute * 1e3, 3), "fps": round(fps, 3), "dropped": buf.dropped}
    rss = rss_bytes()
    if rss is not None:  # per frame, so a soak run's log shows whether memory grows
        record["rss_mib"] = round(rss / 2**20, 2)
    if frame.name:
        record["name"] = frame.name
    for k in ("spike_rate", "synaptic_ops", "macs", "spikes", "sigma_estimate", "member"):
        if k in st:
            record[k] = round(st[k], 3) if k == "sigma_estimate" else st[k]
    if "member" in st:
        summary.members[st["member"]] = summary.members.get(st["member"], 0) + 1
    summary.spike_rate += st.get("spike_rate", 0.0)
    summary.synaptic_ops += st.get("synaptic_ops", 0)
    summary.macs += st.get("macs", 0)
    if estimate is not None and model is not None:
        try:
            parts = [energy_joules(estimate(r, net, shape=_padded((h, w), net)))
                     for r, net in ((r, _network(model, r)) for r in raw)]
        except Exception:  # a profiler that cannot price these stats must not stop the run
            parts = [(None, None)]
        if all(p[0] is not None for p in parts):
            joules = sum(p[0] for p in parts)
            record["energy_uj"] = round(joules * 1e6, 6)
            summary.energy = (summary.energy or 0.0) + joules
            if all(p[1] is not None for p in parts):
                ann = sum(p[1] for p in parts)
                record["ann_energy_uj"] = round(ann * 1e6, 6)
                summary.ann_energy = (summary.ann_energy or 0.0) + ann
    if frame.clean is not None:
        gray_out = denoised if denoised.ndim == 2 else to_luma(denoised)[0]
        clean = frame.clean if frame.clean.ndim == 2 else to_luma(frame.clean)[0]
        noisy_y = frame.image if frame.image.ndim == 2 else to_luma(frame.image)[0]
        pn, pd = psnr(clean, noisy_y), psnr(clean, gray_out)
        record["psnr_noisy"], record["psnr_denoised"] = round(pn, 3), round(pd, 3)
        summary.psnr_noisy = (summary.psnr_noisy or 0.0) + pn
        summary.psnr_denoised = (summary.psnr_denoised or 0.0) + pd
    record["_noisy"], record["_denoised"] = noisy, denoised
    return record
