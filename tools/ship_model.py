#!/usr/bin/env python
"""Ship a trained model file: give it its shipped name and its provenance, keep every integer as exported.

A training run writes ``runs/<run>.esnn``; the shipped file under ``edgespike/models/`` is the same graph and
tensors with two metadata keys set: ``name`` (what ``edgespike info`` shows) and ``training`` (where the commands
and the log are). It is written atomically (no half-written model if this is interrupted).

    python tools/ship_model.py runs/bp_s25_r3.esnn edgespike/models/default_s25.esnn \\
        --name default_s25 --log tools/train_logs/bitplane_s25_r3.train.log
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TRAINING = "tools/train_bitplane.py; commands and logs in docs/MODELS.md, {log}"


def ship(src: str | Path, dest: str | Path, name: str, log: str) -> None:
    """Copy the model ``src`` to ``dest`` with metadata ``name`` and ``training``; the tensors are unchanged.

    Raises
    ------
    edgespike.fileformat.ModelFileError
        ``src`` is not a readable model file.
    ValueError
        ``log`` does not exist (the provenance would point nowhere).
    """
    from edgespike import fileformat

    if not Path(log).is_file():
        raise ValueError(f"training log {log} does not exist: commit the log the model came from first")
    model = fileformat.load(src)
    model.metadata.update(name=name, training=TRAINING.format(log=log))
    fileformat.save(model, dest)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="the run's exported model, e.g. runs/bp_s25_r3.esnn")
    p.add_argument("dest", help="the shipped file, e.g. edgespike/models/default_s25.esnn")
    p.add_argument("--name", required=True, help="metadata name, e.g. default_s25")
    p.add_argument("--log", required=True, help="the committed training log, e.g. tools/train_logs/x.train.log")
    a = p.parse_args(argv)
    from edgespike.fileformat import ModelFileError

    try:
        ship(a.src, a.dest, a.name, a.log)
    except (ModelFileError, ValueError) as e:
        print(f"ship_model: {e}", file=sys.stderr)
        return 2
    print(f"{a.dest}: {a.name}, training log {a.log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
