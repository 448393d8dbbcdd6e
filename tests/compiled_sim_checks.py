"""Checks shared by the compiled simulators' tests (CXXRTL and Verilator share one C ABI and one driver class)."""

from __future__ import annotations

import numpy as np
import pytest

from edgespike import runtime
from edgespike.fpga import cxxrtl


def check_one_library_serves_two_models(first: dict, second: dict, model, other, x: np.ndarray) -> None:
    """``first`` and ``second`` (``build`` results of two models of one shape, one library): two instances at
    once, each with its own model's weights, give each model's pixels (twice: the contents are written again at
    every frame's reset); a memory the library does not have is refused by name."""
    sims = [cxxrtl.Simulation(info["path"], 3, [4, 4, 1], info["inits"]) for info in (first, second)]
    try:
        for _ in range(2):
            got = [sim.run(x, 10**6).out for sim in sims]
            assert np.array_equal(got[0], runtime.denoise(model, x))
            assert np.array_equal(got[1], runtime.denoise(other, x))
            assert not np.array_equal(got[0], got[1])
    finally:
        for sim in sims:
            sim.close()
    with pytest.raises(cxxrtl.Unavailable, match="no memory 'pipeline nothing'"):
        cxxrtl.Simulation(first["path"], 3, [4, 4, 1], [{"name": "pipeline nothing", "addr": 0, "words": 1,
                                                         "width": 8, "data": np.zeros((1, 1), np.uint32)}])
