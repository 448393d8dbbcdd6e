"""The ``edgespike`` command line: one subcommand per module in :mod:`edgespike.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. User errors
are raised as :class:`edgespike.errors.UserError` (or a ``ModelError`` / ``FrameError``) and printed as one line
``edgespike: error: ...`` with exit status 2: no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from edgespike import __version__
from edgespike.errors import UserError
from edgespike.frames import FrameError
from edgespike.model import ModelError

# Order is the order of `edgespike --help`. A module that is not importable (an optional extra is missing) still
# gets its subcommand: the import error is reported when the subcommand runs.
COMMANDS = ["info", "denoise", "eval", "run", "profile", "data", "rtl", "fpga", "import", "export", "compare"]


def _load(name: str):
    try:
        return importlib.import_module(f"edgespike.commands.{name.replace('import', 'import_')}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("edgespike.commands."):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgespike",
        description="Integer spiking neural networks for image denoising at the edge.",
        epilog="Run 'edgespike COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"edgespike {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _load(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (UserError, ModelError, FrameError) as exc:
        print(f"edgespike: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgespike: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``edgespike info M | head``): not an error of ours. Point stdout at devnull so
        # the interpreter's final flush does not raise again (the recipe of the Python signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
