"""``python -m common.train TARGET [--mesh SPEC] [--workdir DIR] [--set k=v ...]``.

The same as ``headlab train`` (used by ``tpu/launch.sh`` and the multi-process tests); prints
the summary as JSON.
"""

from __future__ import annotations

import argparse
import json

from common.train.cli import train_main


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m common.train",
                                description="Train (or resume) a target; prints the summary.")
    p.add_argument("target", help="lm, or a project with a train module")
    p.add_argument("--mesh", default=None, help="e.g. data=2,tensor=4 (dcn:data=2 across slices)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    summary = train_main(a.target, a.mesh, a.workdir, a.overrides)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
