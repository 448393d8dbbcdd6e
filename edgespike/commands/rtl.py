"""``edgespike rtl``: simulate the Amaranth accelerator against the runtime (lives beside the gateware)."""

from edgespike.fpga.cli import DESCRIPTION, HELP, add_arguments, run

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]
