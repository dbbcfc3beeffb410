"""Soft head selection (spec §2.4-2.6): learn ``a = sigmoid(logit) [n_layers, n_heads]`` per task.

Each *problem* (a task and a seed) is one model of a population trained in one compiled step on
the shared loop (:func:`common.train.train`, ``Task.for_population``): at every step each
problem draws one zero-shot training prompt (batch 1, as the official code), mixes its task
embedding into every head's ``z`` at the prompt's last token, ``z' = (1 - a) z + a t``, and
takes the cross-entropy of the answer's first token. Adam (lr 0.2), logits initialised at 0
(``a = 0.5``), no regulariser; the language model is frozen (it is not a parameter of the
population, only a constant of the loss).

Problems are grouped by the padded length of their training prompts (one group per
power-of-two length; ``group_by_length=False`` pads all to the longest: one group, one copy of the
model's program in the compiled step, so less compile time for a little more compute).

Every ``val_every`` steps the loop's ``eval_fn`` computes each problem's
mean validation loss on its zero-shot validation prompts; ``keep_best=True`` returns the
logits of the best validation (what the official code means to do), ``False`` the final ones
(what it does: its best loss is never updated, spec §2.6).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common.interp.task_embedding import (
    bucket,
    first_token_loss,
    injection,
    logits_at,
    pad_right,
)
from projects.soft_injection.episodes import Prompts


@dataclasses.dataclass(frozen=True)
class Problem:
    """One head selection to learn: ``v [L, H, d_head]`` the task embedding, zero-shot
    ``train`` and ``valid`` prompts, ``seed`` the sampling seed of its training prompts."""

    name: str
    v: np.ndarray
    train: Prompts
    valid: Prompts
    seed: int


@dataclasses.dataclass
class Selection:
    """What the training gives, problems in input order.

    Attributes:
      alpha: ``[M, L, H]`` the kept weights (best validation or final, see ``keep_best``).
      alpha_final: ``[M, L, H]`` the weights after the last step.
      val_steps: the steps validated; val_loss ``[n_val, M]``; best_step ``[M]``;
        initial_val_loss ``[M]`` before the first step (a = 0.5; not a candidate for the best).
      train_loss: ``[n_log, M]`` mean training loss per logging window; log_steps.
      seconds_per_step: the loop's mean wall time per step after compilation (validation
        included).
    """

    alpha: np.ndarray
    alpha_final: np.ndarray
    val_steps: list[int]
    val_loss: np.ndarray
    best_step: np.ndarray
    train_loss: np.ndarray
    log_steps: list[int]
    seconds_per_step: float | None
    keep_best: bool
    median_step_s: float | None = None
    initial_val_loss: np.ndarray | None = None


def _table(prompts: Prompts, length: int, rows: int):
    """Right-padded ``ids [rows, length]``, ``last [rows]``, ``target [rows]`` (rows past the
    prompts repeat the first ones; they are never drawn)."""
    toks = list(prompts.tokens)
    reps = [toks[i % len(toks)] for i in range(rows)]
    ids, last = pad_right(reps, length=length)
    tgt = np.asarray([prompts.target[i % len(toks)] for i in range(rows)], np.int32)
    return ids, last, tgt


def _val_losses(llm, logit, v, ids, last, tgt, weight):
    """Mean validation loss of each model: ``logit [M, L, H]``, ``v [M, L, H, D]``,
    ``ids [M, V, T]``, ``weight [M, V]`` (0 at padding rows) -> ``[M]``."""

    def one(xs):
        lg, vv, i, la, t, w = xs
        iv = injection(jax.nn.sigmoid(lg), vv, la, i.shape[1])
        loss = first_token_loss(logits_at(llm, i, la, intervention=iv), t)
        return jnp.sum(loss * w) / jnp.sum(w)

    return jax.lax.map(one, (logit, v, ids, last, tgt, weight))


def learn_selection(llm, problems: Sequence[Problem], *, steps: int = 400, lr: float = 0.2,
                    val_every: int = 50, keep_best: bool = True, steps_per_call: int = 1,
                    group_by_length: bool = True,
                    workdir: str | pathlib.Path, metrics=None,
                    progress: bool = True, mesh: str | None = None) -> Selection:
    """Learn every problem's head selection together (module docstring).

    ``mesh``: the mesh spec of the population's training (the model's own mesh when it is
    loaded sharded, ``config.mesh``); None is data parallel over every device.
    """
    from common.sharding import make_mesh
    from common.train import Group, Population, TrainConfig
    from common.train import Task as TrainTask
    from common.train import train as train_loop

    if not problems:
        raise ValueError("learn_selection: no problems")
    if steps % val_every:
        raise ValueError(f"learn_selection: steps ({steps}) must be a multiple of val_every "
                         f"({val_every})")
    cfg = llm.config
    L, H = cfg.n_layers, cfg.n_heads
    graphdef, lstate = nnx.split(llm)

    # ---- groups: problems whose training prompts pad to the same length -------------------
    lengths = [bucket(max(len(t) for t in p.train.tokens)) for p in problems]
    if not group_by_length:  # one group: one copy of the model's program in the step
        lengths = [max(lengths)] * len(lengths)
    by_len: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_len.setdefault(n, []).append(i)
    groups, data, order = [], {}, []
    for n, members in sorted(by_len.items()):
        rows = max(len(problems[i].train) for i in members)
        tabs = [_table(problems[i].train, n, rows) for i in members]
        data[f"T{n}"] = {
            "ids": jnp.asarray(np.stack([t[0] for t in tabs])),
            "last": jnp.asarray(np.stack([t[1] for t in tabs])),
            "tgt": jnp.asarray(np.stack([t[2] for t in tabs])),
            "n": jnp.asarray([len(problems[i].train) for i in members], jnp.int32),
            "key": jnp.stack([jax.random.key_data(jax.random.key(
                problems[i].seed * 100_003 + i)) for i in members]),
            "v": jnp.asarray(np.stack([problems[i].v for i in members]), jnp.float32),
        }
        order += members

        def loss(params, batch):
            # The loop's step takes no extra arguments, so the frozen model is a constant of
            # this closure; the barrier keeps XLA from folding it (a transposed embedding
            # took minutes of compile time on 2 cores).
            model = nnx.merge(graphdef, jax.lax.optimization_barrier(lstate))
            ids, last = batch["ids"], batch["last"]
            iv = injection(jax.nn.sigmoid(params["logit"]), batch["v"], last, ids.shape[1])
            return jnp.mean(first_token_loss(logits_at(model, ids, last, intervention=iv),
                                             batch["tgt"]))

        groups.append(Group(
            f"T{n}", tuple(problems[i].name for i in members),
            init=lambda m: {"logit": jnp.zeros((L, H), jnp.float32)},
            loss=loss, data=f"T{n}",
            labels=tuple({"problem": problems[i].name} for i in members)))

    def device_data(step):
        out = {}
        for g, d in data.items():
            def pick(key, n, ids, last, tgt):
                j = jax.random.randint(jax.random.fold_in(jax.random.wrap_key_data(key), step),
                                       (), 0, n)
                return ids[j][None], last[j][None], tgt[j][None]

            ids, last, tgt = jax.vmap(pick)(d["key"], d["n"], d["ids"], d["last"], d["tgt"])
            out[g] = {"ids": ids, "last": last, "tgt": tgt, "v": d["v"]}
        return out

    # ---- validation tables (all problems, one padded length) ------------------------------
    n_val = max(len(p.valid) for p in problems)
    vlen = bucket(max(len(t) for p in problems for t in p.valid.tokens))
    vt = [_table(problems[i].valid, vlen, n_val) for i in order]
    vw = np.stack([(np.arange(n_val) < len(problems[i].valid)).astype(np.float32) for i in order])
    vdata = [jnp.asarray(np.stack([t[k] for t in vt])) for k in range(3)]
    v_all = jnp.asarray(np.stack([problems[i].v for i in order]), jnp.float32)
    # the model's arrays enter as arguments: closed over, XLA would fold them as constants
    val_jit = jax.jit(lambda st, lg, v, ids, last, tgt, w: _val_losses(
        nnx.merge(graphdef, st), lg, v, ids, last, tgt, w))
    val_fn = lambda lg: val_jit(lstate, lg, v_all, *vdata, jnp.asarray(vw))  # noqa: E731
    M = len(problems)
    best = {"loss": np.full(M, np.inf), "logit": np.zeros((M, L, H), np.float32),
            "step": np.zeros(M, np.int64)}
    history: list[tuple[int, np.ndarray]] = []

    def stacked(module) -> np.ndarray:
        pure = nnx.to_pure_dict(nnx.state(module, nnx.Param))
        return np.concatenate([np.asarray(pure[g.name]["logit"]) for g in groups])

    def eval_fn(module, step):
        logit = stacked(module)
        losses = np.asarray(val_fn(jnp.asarray(logit)))
        history.append((step, losses))
        better = losses < best["loss"]
        best["loss"] = np.where(better, losses, best["loss"])
        best["logit"][better] = logit[better]
        best["step"][better] = step
        return {"val_loss_mean": float(losses.mean())}

    # the loss before training (a = 0.5 everywhere), for the curves only: not a candidate
    init_loss = np.asarray(val_fn(jnp.zeros((M, L, H), jnp.float32)))
    log_every = 10 if val_every % 10 == 0 and steps_per_call in (1, 2, 5, 10) else val_every
    tc = TrainConfig(steps=steps, log_every=log_every, checkpoint_every=0, eval_every=val_every,
                     steps_per_call=steps_per_call, progress=progress)
    res = train_loop(TrainTask.for_population(Population(tuple(groups)), device_data),
                     optax.adam(lr), None, tc, make_mesh(mesh), workdir, eval_fn=eval_fn,
                     metrics=metrics)
    final = stacked(res.model())
    inv = np.argsort(order)  # population order -> problem order
    kept = best["logit"] if keep_best else final
    logs = _train_log(pathlib.Path(workdir) / "metrics.jsonl" if metrics is None else metrics.path,
                      [p.name for p in problems])
    return Selection(
        alpha=np.asarray(jax.nn.sigmoid(kept))[inv], alpha_final=np.asarray(
            jax.nn.sigmoid(final))[inv],
        val_steps=[s for s, _ in history], val_loss=np.stack([x for _, x in history])[:, inv],
        initial_val_loss=init_loss[inv],
        best_step=best["step"][inv], train_loss=logs[1], log_steps=logs[0],
        seconds_per_step=res.summary.get("mean_step_s"), keep_best=keep_best,
        median_step_s=res.summary.get("median_step_s"))


def _train_log(path, names: list[str]) -> tuple[list[int], np.ndarray]:
    """Per logged step, each problem's mean training loss, from metrics.jsonl's rows."""
    import json

    rows: dict[int, dict[str, float]] = {}
    p = pathlib.Path(path)
    if p.is_file():
        for line in p.read_text().splitlines():
            r = json.loads(line)
            if "problem" in r and "loss" in r:
                rows.setdefault(int(r["step"]), {})[r["problem"]] = float(r["loss"])
    steps = sorted(rows)
    return steps, np.asarray([[rows[s].get(n, np.nan) for n in names] for s in steps])
