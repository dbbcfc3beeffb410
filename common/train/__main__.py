"""``python -m common.train TARGET [--config ARG] [--mesh SPEC] [--workdir DIR] [--set k=v ...]
[--profile START:STEPS]``.

The same as ``headlab train`` (used by ``tpu/launch.sh`` and the multi-process tests); prints
the user's lines (TensorBoard, preemption) and then the summary as JSON on the last line. A bad
target or ``--set`` prints one line and exits with status 2. A preempted run exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.configs import ConfigError
from common.train.cli import train_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m common.train",
                                description="Train (or resume) a target; prints the summary.")
    p.add_argument("target", help="lm, or another project whose train module defines build")
    p.add_argument("--mesh", default=None, help="e.g. data=2,tensor=4 (dcn:data=2 across slices)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--config", default=None, help="the argument of the target's get_config")
    p.add_argument("--profile", default=None, metavar="START:STEPS",
                   help="trace STEPS steps from step START with jax.profiler")
    return p


def main(argv: list[str] | None = None) -> dict:
    p = build_parser()
    a = p.parse_args(argv)
    try:
        summary = train_main(a.target, a.mesh, a.workdir, a.overrides, config_arg=a.config,
                             profile=a.profile, say=lambda line: print(line, flush=True))
    except (ConfigError, ValueError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from common.xla_flags import enable_xnn

    enable_xnn()  # this process is ours: opt in before any JAX backend exists
    main(sys.argv[1:])
