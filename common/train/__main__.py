"""``python -m common.train TARGET [--mesh SPEC] [--workdir DIR] [--set k=v ...]``.

The same as ``headlab train`` (used by ``tpu/launch.sh`` and the multi-process tests); prints
the summary as JSON. A bad target or ``--set`` prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.configs import ConfigError
from common.train.cli import train_main


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m common.train",
                                description="Train (or resume) a target; prints the summary.")
    p.add_argument("target", help="lm, or another project whose train module defines build")
    p.add_argument("--mesh", default=None, help="e.g. data=2,tensor=4 (dcn:data=2 across slices)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    try:
        summary = train_main(a.target, a.mesh, a.workdir, a.overrides)
    except ConfigError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from common.xla_flags import enable_xnn

    enable_xnn()  # this process is ours: opt in before any JAX backend exists
    main(sys.argv[1:])
