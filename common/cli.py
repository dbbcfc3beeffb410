"""The headlab command line: run a paper's experiment, train on a mesh, talk to a model.

::

    headlab [--debug] list
    headlab run PROJECT [--config NAME[:ARG,k=v,...]] [--quick] [--workdir DIR] [--set k=v ...]
    headlab train TARGET [--mesh data=2,tensor=4] [--workdir DIR] [--set key=value ...]
    headlab generate "prompt" [--model NAME_OR_PATH] [--max-new-tokens N] [--temperature T]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import os
import pathlib
import shlex
import sys
import time

from common.configs import ConfigError, find_projects, find_train_targets, load_config
from common.progress import format_seconds


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


def closing_summary(project: str, run_mod, summary: dict | None, workdir: pathlib.Path,
                    seconds: float) -> str:
    """The few lines ``headlab run`` ends with: where the run is, its headline numbers.

    A project's ``run`` module may define ``headline(summary) -> list[str]`` (its numbers beside
    the paper's and the claims' verdicts); otherwise the summary's top-level numbers are shown.
    """
    lines = [f"headlab: {project} finished in {format_seconds(seconds)}; run directory {workdir}"]
    if summary:
        if hasattr(run_mod, "headline"):
            body = list(run_mod.headline(summary))
        else:
            body = [f"{k} = {v:.4g}" for k, v in summary.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)][:12]
        lines += [f"  {line}" for line in body]
    figures = sorted((workdir / "figures").glob("*.png")) if (workdir / "figures").is_dir() else []
    parts = [name for name in ("report.md", "summary.json") if (workdir / name).is_file()]
    if figures:
        parts.append(f"figures/ ({len(figures)} PNG)")
    if parts:
        lines.append(f"  in the run directory: {', '.join(parts)}")
    return "\n".join(lines)


def cmd_run(args) -> int:
    from common.rundir import RunDir

    run_mod = project_module(args.project, "run")
    config = load_config(args.config, f"projects.{args.project}.configs.default",
                         quick=args.quick, overrides=args.set or ())
    # a project's configs.default.validate(config) refuses a bad config before the run
    # directory exists, so nothing is left behind
    validate = getattr(importlib.import_module(f"projects.{args.project}.configs.default"),
                       "validate", None)
    if validate is not None:
        validate(config)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = pathlib.Path(args.workdir or f"runs/{args.project}/{stamp}")
    rd = RunDir(workdir)
    rd.write_config(config)
    print(f"headlab: running {args.project} in {workdir}", file=sys.stderr)
    t0 = time.perf_counter()
    summary = run_mod.run(config, workdir)
    print(closing_summary(args.project, run_mod, summary, workdir, time.perf_counter() - t0))
    return 0


def cmd_train(args) -> int:
    try:
        from common.train.cli import train_main
    except ImportError as e:
        raise CLIError(f"headlab train is not available in this checkout ({e})") from e
    summary = train_main(args.target, args.mesh, args.workdir, args.set or [],
                         config_arg=args.config, profile=args.profile)
    print(closing_train_line(summary))
    return 0


def closing_train_line(summary: dict) -> str:
    """The line ``headlab train`` ends with: steps, loss, throughput."""
    parts = [f"{summary['steps'] if summary.get('preempted_at') is None else summary['preempted_at']}"
             f"/{summary['steps']} steps"]
    for key, fmt in (("final_loss", "loss {:.4f}"), ("tokens_per_sec", "{:,.0f} tokens/s"),
                     ("mean_step_s", "{:.3f} s/step")):
        if isinstance(summary.get(key), int | float):
            parts.append(fmt.format(summary[key]))
    return "trained: " + ", ".join(parts)


def cmd_generate(args) -> int:
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise CLIError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
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
    if len(out) == args.max_new_tokens and out[-1] != tok.eos_token_id:
        print(f"headlab: stopped at --max-new-tokens {args.max_new_tokens} before the model "
              "ended its answer; raise it for more", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="headlab", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error (also: HEADLAB_DEBUG=1)")
    sub = p.add_subparsers(dest="cmd", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter
    sub.add_parser("list", help="name the projects and what each reproduces").set_defaults(fn=cmd_list)

    r = sub.add_parser("run", help="run a paper's experiment", formatter_class=defaults)
    r.add_argument("project")
    r.add_argument("--config", metavar="NAME[:ARG,KEY=VALUE,...]",
                   help="a config file or a name in the project's configs/ (default: default), "
                        "the argument of its get_config, overrides")
    r.add_argument("--quick", action="store_true", help="the config's small CPU variant")
    r.add_argument("--workdir", help="run directory (default runs/PROJECT/<timestamp>)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    r.set_defaults(fn=cmd_run)

    t = sub.add_parser("train", help="train a target on a device mesh", formatter_class=defaults)
    t.add_argument("target", help="a train target (headlab list shows them), e.g. lm")
    t.add_argument("--mesh", help="axis degrees, e.g. data=2,tensor=4 (default: data parallel "
                                  "over every device)")
    t.add_argument("--workdir", help="run directory; the same one resumes "
                                     "(default runs/train-TARGET/<timestamp>)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    t.add_argument("--config", metavar="ARG",
                   help="the argument of the target's get_config (lm: quick, finetune)")
    t.add_argument("--profile", metavar="START:STEPS",
                   help="trace STEPS steps from step START with jax.profiler into WORKDIR/profile")
    t.set_defaults(fn=cmd_train)

    g = sub.add_parser("generate", help="complete a prompt with a pretrained model",
                       formatter_class=defaults)
    g.add_argument("prompt", help="the text to complete (or the user message with --chat)")
    g.add_argument("--model", default="smollm2-135m-instruct",
                   help="a known model name, a .gguf file or a Hugging Face folder")
    g.add_argument("--max-new-tokens", type=int, default=48,
                   help="stop after this many new tokens (said when it cuts the answer)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype")
    g.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                   help="wrap the prompt in the model's chat template")
    g.set_defaults(fn=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``headlab`` command; called without ``argv`` it is the program and owns the process,
    so it opts in to the CPU flags of :mod:`common.xla_flags` (before any JAX backend exists)."""
    if argv is None:
        from common.xla_flags import enable_xnn

        enable_xnn()
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.fn(args)
    except Exception as e:
        if not isinstance(e, user_errors()) or args.debug or os.environ.get("HEADLAB_DEBUG") == "1":
            raise
        print(f"headlab: error: {one_line(e)}{_hint(e, args)}", file=sys.stderr)
        return 2


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean the request can't be served as given (a bad name, file, config, mesh,
    a diverged run); the CLI prints them as one line. Anything else is a bug: traceback."""
    from common.data.errors import DataError
    from common.sharding.mesh import MeshError
    from common.weights.errors import WeightsError
    from common.weights.fetch import FetchError

    return (ConfigError, WeightsError, FetchError, FileNotFoundError, MeshError,
            FloatingPointError, DataError)


def one_line(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


def _hint(e: Exception, args) -> str:
    """How to try a mesh that needs more devices than this machine has."""
    from common.sharding.mesh import MeshError

    needed = getattr(e, "needed", None) if isinstance(e, MeshError) else None
    if not needed:
        return ""
    import jax

    platform = "" if jax.default_backend() == "cpu" else "JAX_PLATFORMS=cpu "
    command = shlex.join(["headlab", *args.argv]) if args.argv else f"headlab {args.cmd} ..."
    return (f". To try it with {needed} fake CPU devices: {platform}XLA_FLAGS="
            f"--xla_force_host_platform_device_count={needed} {command}")


if __name__ == "__main__":
    sys.exit(main())
