#!/usr/bin/env python
"""Make a noise-adaptive model set: networks that are each best at some noise levels, one chosen per frame.

Each ``--member NAME=FILE`` is a model file. ``--bands`` cuts the axis of the frame's estimated noise level
(Immerkaer's estimate, 0..255 scale) into bands, naming the member of each, lowest first: ``blind-net,9.5,s15,18,s25``
runs blind-net below an estimate of 9.5, s15 from 9.5 to 18 and s25 above. A member may serve several bands. The
set stores each member's file whole; ``edgespike info`` shows the bands. Written atomically.

    python tools/make_model_set.py edgespike/models/default_blind.esnn --name default_blind \\
        --member blind-net=edgespike/models/blind_net.esnn --member s15=edgespike/models/default_s15.esnn \\
        --member s25=edgespike/models/default_s25.esnn --member s50=edgespike/models/default_s50.esnn \\
        --bands blind-net,9.5,s15,18,s25,28.5,blind-net,37,s50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _member(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"a member is NAME=FILE, e.g. s25=default_s25.esnn, got {text!r}")
    return name, path


def make(dest: str | Path, members: list[tuple[str, str]], bands: str, name: str) -> None:
    """Write the set of ``(name, model file)`` ``members`` cut into ``bands`` to ``dest``, with metadata ``name``."""
    from edgespike import fileformat
    from edgespike.model import ModelError
    from edgespike.modelset import ModelSet

    loaded = {}
    for key, path in members:
        if key in loaded:
            raise ModelError(f"member {key!r} is given twice")
        loaded[key] = fileformat.load(path)
    fileformat.save(ModelSet.from_spec(loaded, bands, {"name": name}), dest)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", help="the set's file, e.g. edgespike/models/default_blind.esnn")
    p.add_argument("--member", type=_member, action="append", required=True, metavar="NAME=FILE",
                   help="a network and the name the set's summaries use (at least two)")
    p.add_argument("--bands", required=True, metavar="SPEC",
                   help="member names and the estimated noise levels between them, lowest first")
    p.add_argument("--name", required=True, help="metadata name, e.g. default_blind")
    a = p.parse_args(argv)
    from edgespike.model import ModelError

    try:
        make(a.dest, a.member, a.bands, a.name)
    except ModelError as e:
        print(f"make_model_set: {e}", file=sys.stderr)
        return 2
    print(f"{a.dest}: {a.name}, bands {a.bands}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
