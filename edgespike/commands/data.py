"""``edgespike data``: fetch the benchmark datasets and show where they are."""

from __future__ import annotations

import json
import sys

from edgespike import data

HELP = "fetch Set12 / BSD68 / BSD400, or list where they are and whether they verify"
DESCRIPTION = f"""Manage the named datasets (the grey denoising sets of the DnCNN paper).

  edgespike data fetch set12|bsd68|bsd400|all   download what is missing, check every file's SHA-256
  edgespike data list                           where each set is and whether it is complete and verified

They live in $EDGESPIKE_DATA/<name>/ (default ~/.cache/edgespike/<name>/). Without network access, copy the
images into that folder yourself (the list shows the source URL) and run 'edgespike data list' to verify them.
$EDGESPIKE_DATA_MIRROR replaces the download base URL ({data.BASE_URL}); EDGESPIKE_OFFLINE=1 forbids downloads."""


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    f = sub.add_parser("fetch", help="download and verify a dataset")
    f.add_argument("name", choices=data.NAMES + ("all",), help="which dataset")
    ls = sub.add_parser("list", help="where the datasets are, verified or not")
    ls.add_argument("--json", action="store_true", help="machine-readable output")


def _progress(done: int, total: int, name: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r  {done}/{total} {name:<20}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def run(args) -> int:
    if args.action == "fetch":
        names = data.NAMES if args.name == "all" else (args.name,)
        for name in names:
            before = data.status(name)
            if not before.complete and not data.offline():
                print(f"{name}: fetching {before.expected - before.verified} file(s) from {data.source_url(name)}")
            files = data.fetch(name, progress=_progress)
            print(f"{name}: {len(files)} files verified in {files[0].parent}")
        return 0
    rows = [data.status(n) for n in data.NAMES]
    if args.json:
        print(json.dumps([{"name": s.name, "folder": str(s.folder), "expected": s.expected, "present": s.present,
                           "verified": s.verified, "bad": s.bad, "complete": s.complete,
                           "source": data.source_url(s.name), "page": data.page_url(s.name)} for s in rows],
                         indent=2))
        return 0
    print(f"data folder: {data.data_root()}  (set EDGESPIKE_DATA to change it)")
    for s in rows:
        if s.complete:
            state = f"{s.verified}/{s.expected} verified"
        elif s.present == 0:
            state = f"not fetched (edgespike data fetch {s.name})"
        else:
            state = f"{s.verified}/{s.expected} verified, {s.expected - s.present} missing"
            if s.bad:
                state += f", {len(s.bad)} damaged (e.g. {s.bad[0]})"
        print(f"  {s.name:<7} {data.DESCRIPTIONS[s.name]:<45} {state}")
        print(f"          {s.folder}   <- {data.page_url(s.name)}")
    return 0
