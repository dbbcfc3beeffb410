"""The ``headlab`` command line.

::

    headlab list
    headlab run PROJECT [--config NAME[:ARG,k=v,...]] [--quick] [--workdir DIR] [--set k=v ...]
    headlab train TARGET [--mesh data=2,tensor=4] [--workdir DIR] [--set key=value ...]
    headlab generate "prompt" [--model NAME_OR_PATH] [--max-new-tokens N] [--temperature T]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import pathlib
import sys

from common.configs import ConfigError, find_projects, find_train_targets, load_config


class CLIError(ConfigError):
    """A user error: printed as one line without a traceback, exit status 2."""


def project_module(name: str, sub: str | None = None):
    """Import ``projects.<name>[.<sub>]`` with clear errors for unknown/unbuilt projects."""
    known = find_projects()
    if name not in known:
        hint = (f" ({name!r} is a train target: headlab train {name})"
                if name in find_train_targets() else "")
        raise CLIError(f"unknown project {name!r}; known projects: {', '.join(known) or '(none)'}"
                       + hint)
    mod = f"projects.{name}" + (f".{sub}" if sub else "")
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name and (e.name == mod or mod.startswith(e.name + ".") or e.name.startswith(mod)):
            raise CLIError(f"project {name!r} is not implemented in this checkout ({mod} missing)") from e
        raise


def cmd_list(_args) -> int:
    for name in find_projects():
        print(f"{name:18s} {getattr(project_module(name), 'DESCRIPTION', '')}")
    targets = find_train_targets()
    if targets:
        print(f"\ntrain targets (headlab train TARGET): {', '.join(targets)}")
    return 0


def cmd_run(args) -> int:
    from common.rundir import RunDir

    run_mod = project_module(args.project, "run")
    config = load_config(args.config, f"projects.{args.project}.configs.default",
                         quick=args.quick, overrides=args.set or ())
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = pathlib.Path(args.workdir or f"runs/{args.project}/{stamp}")
    rd = RunDir(workdir)
    rd.write_config(config)
    print(f"headlab: running {args.project} in {workdir}", file=sys.stderr)
    summary = run_mod.run(config, workdir)
    print(f"headlab: done; summary in {workdir / 'summary.json'}", file=sys.stderr)
    if summary is not None:
        import json

        from common.rundir import to_jsonable

        print(json.dumps(to_jsonable(summary), indent=1)[:4000])
    return 0


def cmd_train(args) -> int:
    try:
        from common.train.cli import train_main
    except ImportError as e:
        raise CLIError(f"headlab train is not available in this checkout ({e})") from e
    train_main(args.target, args.mesh, args.workdir, args.set or [])
    return 0


def cmd_generate(args) -> int:
    from common.models import generate, load_pretrained

    model, tok = load_pretrained(args.model, dtype=args.dtype)
    text = args.prompt
    if args.chat:
        text = tok.apply_chat_template([{"role": "user", "content": text}],
                                       add_generation_prompt=True)
    ids = tok.encode(text)
    out = generate(model, [ids], args.max_new_tokens, temperature=args.temperature,
                   seed=args.seed, eos_token_id=tok.eos_token_id)[0]
    print(tok.decode(out, skip_special_tokens=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headlab", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="name the projects and what each reproduces").set_defaults(fn=cmd_list)

    r = sub.add_parser("run", help="run a paper's experiment")
    r.add_argument("project")
    r.add_argument("--config", metavar="NAME[:ARG,KEY=VALUE,...]",
                   help="a config file or a name in the project's configs/ (default: default), "
                        "the argument of its get_config, overrides")
    r.add_argument("--quick", action="store_true", help="the config's small CPU variant")
    r.add_argument("--workdir", help="run directory (default runs/PROJECT/<timestamp>)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    r.set_defaults(fn=cmd_run)

    t = sub.add_parser("train", help="train a target on a device mesh")
    t.add_argument("target")
    t.add_argument("--mesh", help="e.g. data=2,tensor=4")
    t.add_argument("--workdir")
    t.add_argument("--set", action="append", metavar="KEY=VALUE")
    t.set_defaults(fn=cmd_train)

    g = sub.add_parser("generate", help="complete a prompt with a pretrained model")
    g.add_argument("prompt")
    g.add_argument("--model", default="smollm2-135m-instruct")
    g.add_argument("--max-new-tokens", type=int, default=48)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    g.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                   help="wrap the prompt in the model's chat template (default on)")
    g.set_defaults(fn=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``headlab`` command; called without ``argv`` it is the program and owns the process,
    so it opts in to the CPU flags of :mod:`common.xla_flags` (before any JAX backend exists)."""
    if argv is None:
        from common.xla_flags import enable_xnn

        enable_xnn()
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"headlab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
