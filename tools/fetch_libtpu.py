"""Install the libtpu that this jax pins into a private folder and print the folder.

    export HEADLAB_LIBTPU_PATH=$(python -m tools.fetch_libtpu)
    PYTHONPATH=$HEADLAB_LIBTPU_PATH JAX_PLATFORMS=cpu python -m tpu.aot lm --preset v5p-64

The TPU compiler in libtpu is what ``tpu.aot`` (and ``tests/tpu``) need to compile a train step
for a TPU topology on a CPU machine. It goes into ``$HEADLAB_CACHE/../libtpu`` (default
``~/.cache/headlab/libtpu``), never into site-packages: installed there, it would make every
``import jax`` probe for a TPU. The version is the one the installed jax's ``tpu`` extra
requires (``jax[tpu]==0.10.2`` pins ``libtpu==0.0.42.*``); an existing install of that version
is reused.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys

from packaging.requirements import Requirement  # a dependency of matplotlib


def pinned_requirement() -> str:
    """The libtpu requirement of the installed jax's ``tpu`` extra, e.g. ``libtpu==0.0.42.*``."""
    for req in importlib.metadata.requires("jax") or ():
        spec, _, marker = req.partition(";")
        if re.match(r"libtpu\b", spec.strip()) and "tpu" in marker:
            return spec.strip().replace(" ", "")
    raise RuntimeError("the installed jax names no libtpu in its 'tpu' extra")


def default_folder() -> pathlib.Path:
    """``$HEADLAB_CACHE/../libtpu``, or ``~/.cache/headlab/libtpu``."""
    env = os.environ.get("HEADLAB_CACHE")
    base = pathlib.Path(env).expanduser().parent if env else pathlib.Path.home() / ".cache/headlab"
    return base / "libtpu"


def installed_version(folder: pathlib.Path) -> str | None:
    """Version of the libtpu under ``folder`` (from its dist-info), or None."""
    found = sorted(folder.glob("libtpu-*.dist-info"))
    if not found or not (folder / "libtpu").is_dir():
        return None
    return found[-1].name[len("libtpu-"):-len(".dist-info")]


def matches(version: str, requirement: str) -> bool:
    """Whether ``version`` satisfies ``requirement`` (PEP 440, e.g. ``libtpu==0.0.42.*``)."""
    return Requirement(requirement).specifier.contains(version, prereleases=True)


def fetch_libtpu(folder: pathlib.Path | None = None) -> pathlib.Path:
    """Install the pinned libtpu into ``folder`` unless it is there already; return the folder."""
    folder = pathlib.Path(folder or default_folder())
    req = pinned_requirement()
    have = installed_version(folder)
    if have is not None and matches(have, req):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    print(f"installing {req} into {folder} (about 700 MB) ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
           "--no-deps", "--upgrade", "--target", str(folder), req]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(done.stderr or done.stdout)[-2000:]}")
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.fetch_libtpu",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", default=None, help=f"default: {default_folder()}")
    args = ap.parse_args(argv)
    try:
        print(fetch_libtpu(args.folder))
    except RuntimeError as e:
        print(f"fetch_libtpu: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
