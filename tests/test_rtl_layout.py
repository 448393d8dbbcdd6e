"""``rtl/`` holds gateware only: no module there imports the host side (issue 17, item 7).

The host side is the planner, the cycle model, the simulation drivers, the CLI and the build driver
(``edgespike.fpga``), the board-side driver (``edgespike.firmware``) and the runtime with everything it stands on
(``edgespike.runtime``, ``edgespike.reference``, the kernels, file formats, the CLI). The check reads every
module's syntax tree, so an import inside a function (a lazy import) is caught as well as one at the top; and the
standard-library modules a host tool would need (processes, sockets, argument parsing, files) are refused too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RTL = Path(__file__).resolve().parents[1] / "rtl"

# What gateware may import. First party: the gateware itself and the model description it is parameterised by
# (edgespike.model: plain dataclasses, no runtime). Third party: Amaranth, the board definitions, numpy.
# (importlib: a board's amaranth-boards platform class is named by a string)
ALLOWED_TOP = {"__future__", "dataclasses", "math", "struct", "typing", "collections", "functools", "itertools",
               "enum", "importlib", "amaranth", "amaranth_boards", "numpy", "edgespike"}
ALLOWED_FIRST_PARTY = ("edgespike.rtl", "edgespike.model")


def imports_of(source: str, package: str = "edgespike.rtl") -> list[str]:
    """Every module a source imports (absolute names; relative imports resolved against ``package``)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module
            # ``from edgespike import fpga`` imports edgespike.fpga: name the imported submodules too
            names += [mod] + [f"{mod}.{alias.name}" for alias in node.names if mod == "edgespike"]
    return names


def refused(name: str) -> bool:
    top = name.split(".")[0]
    if top not in ALLOWED_TOP:
        return True
    if top != "edgespike" or name == "edgespike":
        return False
    return not any(name == p or name.startswith(p + ".") for p in ALLOWED_FIRST_PARTY)


def test_the_scan_catches_host_imports():
    """The checker itself: each of these would put host code into the gateware."""
    bad = {
        "from edgespike.fpga.params import plan": "edgespike.fpga.params",
        "import edgespike.firmware.accelerator": "edgespike.firmware.accelerator",
        "def f():\n    from edgespike.runtime import Runtime\n": "edgespike.runtime",
        "from edgespike import reference": "edgespike.reference",
        "from ..fpga import cycles": "edgespike.fpga",
        "import subprocess": "subprocess",
        "class A:\n    def g(self):\n        import argparse\n": "argparse",
    }
    for source, name in bad.items():
        found = [n for n in imports_of(source) if refused(n)]
        assert name in found, (source, found)
    fine = "from amaranth.hdl import Module\nfrom edgespike.rtl.common import bits_for\nfrom . import uart\n"
    assert not [n for n in imports_of(fine) if refused(n)]


@pytest.mark.parametrize("path", sorted(RTL.glob("*.py")), ids=lambda p: p.name)
def test_gateware_imports_no_host_code(path):
    found = [n for n in imports_of(path.read_text()) if refused(n)]
    assert not found, f"rtl/{path.name} imports host-side modules {found}: move that code to edgespike/fpga/"


def test_host_modules_left_rtl():
    """The planner, cycle model, simulation drivers, CLI, yosys driver and example models are host code."""
    assert RTL.is_dir() and len(list(RTL.glob("*.py"))) > 10
    for name in ("cycles", "cli", "synth", "sim", "examples"):
        assert not (RTL / f"{name}.py").exists(), f"rtl/{name}.py is host code: it belongs in edgespike/fpga/"
