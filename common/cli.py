"""The ``headlab`` command line.

::

    headlab list
    headlab run PROJECT [--config FILE[:ARGS]] [--quick] [--workdir DIR] [--set key=value ...]
    headlab train TARGET [--mesh data=2,tensor=4] [--workdir DIR] [--set key=value ...]
    headlab generate "prompt" [--model NAME_OR_PATH] [--max-new-tokens N] [--temperature T]
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import importlib
import importlib.util
import pathlib
import sys

PROJECTS = ("icl_regression", "successor_heads", "soft_injection", "act_calibration", "pine", "oat")


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def project_module(name: str, sub: str | None = None):
    """Import ``projects.<name>[.<sub>]`` with clear errors for unknown/unbuilt projects."""
    if name not in PROJECTS:
        raise CLIError(f"unknown project {name!r}; known projects: {', '.join(PROJECTS)}")
    mod = f"projects.{name}" + (f".{sub}" if sub else "")
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name and (e.name == mod or mod.startswith(e.name + ".") or e.name.startswith(mod)):
            raise CLIError(f"project {name!r} is not implemented in this checkout ({mod} missing)") from e
        raise


def load_config(project: str, spec: str | None, quick: bool):
    """``--config FILE[:ARGS]`` (default: the project's configs/default.py) -> ConfigDict."""
    arg = None
    if spec:
        path, _, arg = spec.partition(":")
        path = pathlib.Path(path)
        if not path.is_file():
            raise CLIError(f"--config: no such file {str(path)!r}")
        s = importlib.util.spec_from_file_location(f"_headlab_config_{path.stem}", path)
        module = importlib.util.module_from_spec(s)
        s.loader.exec_module(module)
        arg = arg or None
    else:
        module = project_module(project, "configs.default")
    if not hasattr(module, "get_config"):
        raise CLIError(f"--config: {module.__name__} has no get_config(arg)")
    if quick:
        arg = "quick" if not arg else f"quick,{arg}"
    return module.get_config(arg)


def _parse_value(text: str, current):
    if isinstance(current, bool):
        low = text.lower()
        if low in ("1", "true", "yes"):
            return True
        if low in ("0", "false", "no"):
            return False
        raise CLIError(f"--set: expected a boolean, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if current is not None and not isinstance(value, type(current)) and not (
        isinstance(current, (list, tuple)) and isinstance(value, (list, tuple))
    ):
        raise CLIError(f"--set: expected {type(current).__name__}, got {text!r}")
    return value


def apply_overrides(config, overrides: list[str]):
    """Apply ``key.sub=value`` overrides; unknown keys are errors naming the key."""
    for item in overrides or []:
        key, eq, text = item.partition("=")
        if not eq:
            raise CLIError(f"--set: expected key=value, got {item!r}")
        node = config
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node:
                raise CLIError(f"--set: unknown config key {key!r}")
            node = node[p]
        if parts[-1] not in node:
            raise CLIError(f"--set: unknown config key {key!r}")
        node[parts[-1]] = _parse_value(text, node[parts[-1]])
    return config


def cmd_list(_args) -> int:
    for name in PROJECTS:
        try:
            desc = getattr(project_module(name), "DESCRIPTION", "")
        except CLIError:
            desc = "(not implemented yet)"
        print(f"{name:18s} {desc}")
    return 0


def cmd_run(args) -> int:
    from common.rundir import RunDir

    run_mod = project_module(args.project, "run")
    config = apply_overrides(load_config(args.project, args.config, args.quick), args.set)
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
    r.add_argument("--config", help="FILE[:ARGS], default the project's configs/default.py")
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
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CLIError as e:
        print(f"headlab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
