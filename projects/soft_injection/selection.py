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

A problem may hold several task embeddings, ``v [K, L, H, d_head]``, its prompts each naming
theirs (``train_task``, ``valid_task``): the *task-agnostic* selection of the official code
(one ``a`` trained on a mixture of tasks, each prompt injected with its own task's ``t``).

**Prefix caches.** The mixing edits the last token alone, so the tokens before it are the
unedited model's at every step. The rows each problem draws are a function of the step, so
before training the keys and values of the distinct prompts a group will draw are computed
(batched forwards of at most 64 prompts, :func:`~common.interp.task_embedding.prefix_cache`),
groups in order of prompt length while they fit in ``prefix_cache_mb`` (one device only); a
step of such a group runs the last token alone (``logits_at(..., prefix=)``: the same loss and
gradient, each weight multiplied by one row instead of the prompt's ``T``). Other groups run
the whole prompt. Validation is one table per padded prompt length, as the training groups.

**Resuming.** The loop checkpoints at every validation step (``checkpoints/``) and each
validation writes its losses and logits to ``selection/val_<step>.npz``; the same call on the
same ``workdir`` resumes from the newest checkpoint (the loop's data are drawn from the step
number, so a resumed run is bit for bit an uninterrupted one), and a validation the
interrupted run missed at that step is recomputed from its checkpoint. A finished run's
rerun reads its selection back without a step. Checkpoints of other problems are refused
(``meta``: names, steps, learning rate and a checksum of the data).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zlib
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
    prefix_cache,
)
from common.models import layer_stack
from common.models.compile_cache import not_written
from common.models.decoder import KVCache, LayerKV
from projects.soft_injection.episodes import Prompts


@dataclasses.dataclass(frozen=True)
class Problem:
    """One head selection to learn: ``v [L, H, d_head]`` the task embedding (or ``[K, L, H,
    d_head]``, several tasks' embeddings, with ``train_task [len(train)]`` and ``valid_task
    [len(valid)]`` naming each prompt's), zero-shot ``train`` and ``valid`` prompts, ``seed``
    the sampling seed of its training prompts."""

    name: str
    v: np.ndarray
    train: Prompts
    valid: Prompts
    seed: int
    train_task: np.ndarray | None = None
    valid_task: np.ndarray | None = None

    def embeddings(self) -> np.ndarray:
        """``[K, L, H, d_head]``."""
        v = np.asarray(self.v, np.float32)
        return v[None] if v.ndim == 3 else v

    def task_of(self, split: str) -> np.ndarray:
        """Each ``split`` prompt's embedding index (into :meth:`embeddings`)."""
        idx = self.train_task if split == "train" else self.valid_task
        n = len(self.train if split == "train" else self.valid)
        if idx is None:
            if self.embeddings().shape[0] != 1:
                raise ValueError(f"Problem {self.name}: several embeddings need {split}_task")
            return np.zeros(n, np.int32)
        idx = np.asarray(idx, np.int32)
        if idx.shape != (n,) or idx.min() < 0 or idx.max() >= self.embeddings().shape[0]:
            raise ValueError(f"Problem {self.name}: {split}_task must index its embeddings, one "
                             f"per prompt")
        return idx


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
        included); resumed_from: the step this call's training resumed from (0: a fresh run).
      prefix_prompts: the prompts whose prefix caches were computed before training (0: steps
        on whole prompts); prefix_compile_s, prefix_run_s: the seconds spent compiling and
        running those forwards (not in the loop's step times).
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
    resumed_from: int = 0
    prefix_prompts: int = 0
    prefix_compile_s: float = 0.0
    prefix_run_s: float = 0.0


def _table(prompts: Prompts, length: int, rows: int, task: np.ndarray):
    """Right-padded ``ids [rows, length]``, ``last [rows]``, ``target [rows]``, ``task
    [rows]`` (rows past the prompts repeat the first ones; they are never drawn)."""
    toks = list(prompts.tokens)
    reps = [toks[i % len(toks)] for i in range(rows)]
    ids, last = pad_right(reps, length=length)
    tgt = np.asarray([prompts.target[i % len(toks)] for i in range(rows)], np.int32)
    return ids, last, tgt, np.asarray([task[i % len(toks)] for i in range(rows)], np.int32)


def _draw(key: jax.Array, n: jax.Array, step: jax.Array) -> jax.Array:
    """The training row a problem draws at ``step`` (``key`` its raw key data, ``n`` its
    number of prompts): a function of the step, so a resumed run draws the same."""
    return jax.random.randint(jax.random.fold_in(jax.random.wrap_key_data(key), step), (), 0, n)


def _distinct_draws(d: dict, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``(member, row)`` prompts a group's members draw over ``steps`` steps, as
    ``member * rows + row`` ``[U]``, and ``index [M_g, steps]`` of each step's draw in them."""
    drawn = np.asarray(jax.vmap(lambda key, n: jax.vmap(lambda t: _draw(key, n, t))(
        jnp.arange(steps, dtype=jnp.int32)))(d["key"], d["n"]))  # [M_g, steps]
    rows = d["ids"].shape[1]
    uniq, index = np.unique(np.arange(drawn.shape[0])[:, None] * rows + drawn,
                            return_inverse=True)
    return uniq, index.reshape(drawn.shape)


def prefix_bytes(config, prompts: int, length: int) -> int:
    """Bytes of the prefix caches of ``prompts`` prompts padded to ``length`` tokens (keys and
    values of ``length + 1`` slots in every layer, float32)."""
    return prompts * (length + 1) * 2 * config.n_layers * config.n_kv_heads * config.d_head * 4


def _prefix_tables(llm, layers, d: dict, uniq: np.ndarray, index: np.ndarray,
                   chunk: int = 64) -> tuple[dict, float, float]:
    """The prefix caches of the distinct prompts ``uniq [U]`` a group's members draw
    (:func:`_distinct_draws`): ``kv`` (one ``(k, v)`` pair of ``[U, T + 1, kv_heads, d_head]``
    per layer), ``valid [U, T + 1]`` and ``index [M_g, steps]`` into them; and the seconds
    spent compiling and running the forwards."""
    import time

    graphdef, state = nnx.split(llm)
    m_u, r_u = np.divmod(uniq, d["ids"].shape[1])
    ids, last = np.asarray(d["ids"])[m_u, r_u], np.asarray(d["last"])[m_u, r_u]
    n, k, v, valid = len(last), [], [], []
    chunk = -(-n // -(-n // chunk))  # equal chunks of at most ``chunk``: one program
    t0 = time.perf_counter()
    fill = jax.jit(lambda st, pl, ids, last: prefix_cache(nnx.merge(graphdef, st), ids, last,
                                                          per_layer=pl)).lower(
        state, layers, jnp.asarray(ids[:chunk]), jnp.asarray(last[:chunk])).compile()
    t1 = time.perf_counter()
    for i in range(0, n, chunk):  # a fixed batch: one compiled program
        sl = np.arange(i, i + chunk) % n
        c = fill(state, layers, jnp.asarray(ids[sl]), jnp.asarray(last[sl]))
        keep = min(chunk, n - i)
        k.append([kv.k[:keep] for kv in c.layers])
        v.append([kv.v[:keep] for kv in c.layers])
        valid.append(c.valid[:keep])
    tables = {"kv": [(jnp.concatenate([c[layer] for c in k]),
                      jnp.concatenate([c[layer] for c in v])) for layer in range(len(k[0]))],
              "valid": jnp.concatenate(valid), "index": jnp.asarray(index, jnp.int32)}
    jax.block_until_ready(tables)
    return tables, t1 - t0, time.perf_counter() - t1


def _val_losses(llm, per_layer, table, logit, vidx, ids, last, tgt, weight):
    """Mean validation loss of each model: ``table [G, L, H, D]`` every embedding, ``logit
    [M, L, H]``, ``vidx [M, V]`` each prompt's row of ``table``, ``ids [M, V, T]``, ``weight
    [M, V]`` (0 at padding rows) -> ``[M]``. Each prompt gets its own embedding (vmapped
    over prompts: one batched forward per model)."""

    def one(xs):
        lg, vi, i, la, t, w = xs
        a = jax.nn.sigmoid(lg)

        def row(vv, ii, ll):
            iv = injection(a, vv, ll[None], ii.shape[0])
            return logits_at(llm, ii[None], ll[None], intervention=iv, per_layer=per_layer)[0]

        logits = jax.vmap(row)(table[vi], i, la)
        loss = first_token_loss(logits, t)
        return jnp.sum(loss * w) / jnp.sum(w)

    return jax.lax.map(one, (logit, vidx, ids, last, tgt, weight))


def _crc(*arrays) -> int:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
    return crc


def _save_validation(folder: pathlib.Path, step: int, losses: np.ndarray,
                     logit: np.ndarray) -> None:
    """``folder/val_<step>.npz`` written whole or not at all (a temporary file renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".val_{step:07d}.tmp.npz"
    np.savez(tmp, losses=losses, logit=logit)
    os.replace(tmp, folder / f"val_{step:07d}.npz")


def _load_validations(folder: pathlib.Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for f in sorted(folder.glob("val_*.npz")) if folder.is_dir() else []:
        with np.load(f) as z:
            out[int(f.stem[4:])] = (z["losses"], z["logit"])
    return out


def learn_selection(llm, problems: Sequence[Problem], *, steps: int = 400, lr: float = 0.2,
                    val_every: int = 50, keep_best: bool = True, steps_per_call: int = 1,
                    group_by_length: bool = True,
                    workdir: str | pathlib.Path, metrics=None,
                    progress: bool = True, mesh: str | None = None,
                    prefix_cache_mb: float = 1024.0) -> Selection:
    """Learn every problem's head selection together (module docstring); resumes from
    ``workdir``'s checkpoints when there are any.

    ``prefix_cache_mb``: the memory the drawn prompts' prefix caches may take (module
    docstring); 0 runs every step on the whole prompt.

    ``mesh``: the mesh spec of the population's training (the model's own mesh when it is
    loaded sharded, ``config.mesh``); None is data parallel over every device.
    """
    with not_written():  # the step's executable carries the frozen model: never cached
        return _learn_selection(llm, problems, steps=steps, lr=lr, val_every=val_every,
                                keep_best=keep_best, steps_per_call=steps_per_call,
                                group_by_length=group_by_length, workdir=workdir,
                                metrics=metrics, progress=progress, mesh=mesh,
                                prefix_cache_mb=prefix_cache_mb)


def _learn_selection(llm, problems, *, steps, lr, val_every, keep_best, steps_per_call,
                     group_by_length, workdir, metrics, progress, mesh,
                     prefix_cache_mb) -> Selection:
    from common.sharding import make_mesh
    from common.train import Group, Population, TrainConfig
    from common.train import Task as TrainTask
    from common.train import train as train_loop
    from common.train.orbax_checkpoint import Checkpointer

    if not problems:
        raise ValueError("learn_selection: no problems")
    if steps % val_every:
        raise ValueError(f"learn_selection: steps ({steps}) must be a multiple of val_every "
                         f"({val_every})")
    workdir = pathlib.Path(workdir)
    cfg = llm.config
    L, H = cfg.n_layers, cfg.n_heads
    graphdef, lstate = nnx.split(llm)
    # the frozen layers on their own arrays (sliced out of the stack once, here): the scanned
    # stack copies every layer's weight slice in the forward and again in the backward loop
    layers = layer_stack.unstack(llm.blocks)

    # ---- every embedding in one table; each prompt names its row ----------------------------
    embs = [p.embeddings() for p in problems]
    offsets = np.cumsum([0] + [e.shape[0] for e in embs])
    table_np = np.concatenate(embs)
    table = jnp.asarray(table_np, jnp.float32)

    # ---- groups: problems whose training prompts pad to the same length -------------------
    lengths = [bucket(max(len(t) for t in p.train.tokens)) for p in problems]
    if not group_by_length:  # one group: one copy of the model's program in the step
        lengths = [max(lengths)] * len(lengths)
    by_len: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_len.setdefault(n, []).append(i)
    groups, data, order, prefixes = [], {}, [], {}
    prefix_stats = np.zeros(3)  # prompts, compile seconds, run seconds
    prefix_left = prefix_cache_mb * 2**20 if mesh is None else 0  # bytes still allowed
    crc_parts: list[np.ndarray] = [table_np]
    for n, members in sorted(by_len.items()):
        rows = max(len(problems[i].train) for i in members)
        tabs = [_table(problems[i].train, n, rows, problems[i].task_of("train") + offsets[i])
                for i in members]
        stacked = [np.stack([t[k] for t in tabs]) for k in range(4)]
        crc_parts += stacked
        data[f"T{n}"] = {
            "ids": jnp.asarray(stacked[0]), "last": jnp.asarray(stacked[1]),
            "tgt": jnp.asarray(stacked[2]), "vrow": jnp.asarray(stacked[3]),
            "n": jnp.asarray([len(problems[i].train) for i in members], jnp.int32),
            "key": jnp.stack([jax.random.key_data(jax.random.key(
                problems[i].seed * 100_003 + i)) for i in members]),
        }
        order += members
        uniq, index = _distinct_draws(data[f"T{n}"], steps)
        need = prefix_bytes(cfg, len(uniq), n)
        if 0 < need <= prefix_left:
            prefix_left -= need
            prefixes[f"T{n}"], compile_s, run_s = _prefix_tables(llm, layers, data[f"T{n}"],
                                                                 uniq, index)
            prefix_stats += (len(uniq), compile_s, run_s)

        def loss(params, batch):
            # The loop's step takes no extra arguments, so the frozen model is a constant of
            # this closure; the barrier keeps XLA from folding it (a transposed embedding
            # took minutes of compile time on 2 cores).
            model, per_layer = jax.lax.optimization_barrier((nnx.merge(graphdef, lstate),
                                                             layers))
            ids, last, a = batch["ids"], batch["last"], jax.nn.sigmoid(params["logit"])
            if "prefix" in batch:  # the last token alone, on its prompt's cached prefix
                pre = batch["prefix"]
                cache = KVCache(tuple(LayerKV(k, v) for k, v in pre["kv"]),
                                jnp.asarray(ids.shape[1], jnp.int32), pre["valid"])
                logits = logits_at(model, ids, last, per_layer=per_layer, prefix=cache,
                                   intervention=injection(a, batch["v"], jnp.zeros_like(last), 1))
            else:
                logits = logits_at(model, ids, last, per_layer=per_layer,
                                   intervention=injection(a, batch["v"], last, ids.shape[1]))
            return jnp.mean(first_token_loss(logits, batch["tgt"]))

        groups.append(Group(
            f"T{n}", tuple(problems[i].name for i in members),
            init=lambda m: {"logit": jnp.zeros((L, H), jnp.float32)},
            loss=loss, data=f"T{n}",
            labels=tuple({"problem": problems[i].name} for i in members)))

    def device_data(step):
        out = {}
        for g, d in data.items():
            def pick(key, n, ids, last, tgt, vrow):
                j = _draw(key, n, step)
                return ids[j][None], last[j][None], tgt[j][None], vrow[j]

            ids, last, tgt, vrow = jax.vmap(pick)(d["key"], d["n"], d["ids"], d["last"],
                                                  d["tgt"], d["vrow"])
            out[g] = {"ids": ids, "last": last, "tgt": tgt,
                      "v": jax.lax.optimization_barrier(table)[vrow]}
            if g in prefixes:  # this step's prefix of each member's prompt: [M_g, 1, ...]
                pre = jax.lax.optimization_barrier(prefixes[g])
                u = pre["index"][:, jnp.minimum(step, steps - 1)]
                out[g]["prefix"] = jax.tree.map(lambda a, u=u: a[u][:, None],
                                                {"kv": pre["kv"], "valid": pre["valid"]})
        return out

    # ---- validation tables: one per padded prompt length (as the training groups) ----------
    # the model's arrays enter as arguments: closed over, XLA would fold them as constants
    val_jit = jax.jit(lambda st, pl, tb, lg, vi, ids, last, tgt, w: _val_losses(
        nnx.merge(graphdef, st), pl, tb, lg, vi, ids, last, tgt, w))
    by_vlen: dict[int, list[int]] = {}  # padded length -> positions in the population order
    for pos, i in enumerate(order):
        by_vlen.setdefault(bucket(max(len(t) for t in problems[i].valid.tokens)), []).append(pos)
    vgroups = []
    for vlen, where in sorted(by_vlen.items()):
        n_val = max(len(problems[order[q]].valid) for q in where)
        vt = [_table(problems[order[q]].valid, vlen, n_val,
                     problems[order[q]].task_of("valid") + offsets[order[q]]) for q in where]
        vw = np.stack([(np.arange(n_val) < len(problems[order[q]].valid)).astype(np.float32)
                       for q in where])
        vdata = [jnp.asarray(np.stack([t[k] for t in vt])) for k in range(4)]
        crc_parts += [np.asarray(x) for x in vdata]
        vgroups.append((np.asarray(where), vdata, jnp.asarray(vw)))

    def val_fn(lg: jax.Array) -> np.ndarray:
        """``[M]`` mean validation losses of the logits ``lg [M, L, H]`` (population order)."""
        out = np.zeros(lg.shape[0], np.float32)
        for where, vdata, vw in vgroups:
            out[where] = np.asarray(val_jit(lstate, layers, table, lg[where], vdata[3],
                                            *vdata[:3], vw))
        return out

    M = len(problems)
    folder = workdir / "selection"

    def stacked(module) -> np.ndarray:
        pure = nnx.to_pure_dict(nnx.state(module, nnx.Param))
        return np.concatenate([np.asarray(pure[g.name]["logit"]) for g in groups])

    def eval_fn(module, step):
        logit = stacked(module)
        losses = np.asarray(val_fn(jnp.asarray(logit)))
        _save_validation(folder, step, losses, logit)
        return {"val_loss_mean": float(losses.mean())}

    # the loss before training (a = 0.5 everywhere), for the curves only: not a candidate
    init_loss = np.asarray(val_fn(jnp.zeros((M, L, H), jnp.float32)))
    log_every = 10 if val_every % 10 == 0 and steps_per_call in (1, 2, 5, 10) else val_every
    task = TrainTask.for_population(Population(tuple(groups)), device_data)
    meta = {"problems": [p.name for p in problems], "order": [int(i) for i in order],
            "steps": steps, "lr": lr, "val_every": val_every, "data_crc32": _crc(*crc_parts)}

    def run(n_steps: int):
        tc = TrainConfig(steps=n_steps, log_every=log_every, checkpoint_every=val_every,
                         eval_every=val_every, steps_per_call=steps_per_call, progress=progress,
                         keep_checkpoints=2)
        return train_loop(task, optax.adam(lr), None, tc, make_mesh(mesh), workdir,
                          eval_fn=eval_fn, metrics=metrics, meta=meta)

    ckpt_dir = workdir / "checkpoints"
    saved = []
    if ckpt_dir.is_dir():
        from common.train.loop import check_meta

        check_meta(ckpt_dir, meta)  # another run's checkpoints: refused, not resumed
        c = Checkpointer(ckpt_dir, keep=2, async_save=False)
        saved = c.all_steps()
        c.close()
    if not saved and folder.is_dir():  # nothing to resume: drop stale validations
        for f in folder.glob("*val_*.npz"):
            f.unlink()
    if saved and max(saved) not in _load_validations(folder):
        # interrupted between the checkpoint of a validation step and its validation: rerun
        # to that step (restores it, no step taken) and validate its weights
        probe = run(min(max(saved), steps))
        s = probe.summary["resumed_from"]
        if s == min(max(saved), steps) and s not in _load_validations(folder):
            eval_fn(probe.model(), s)
    res = run(steps)
    final = stacked(res.model())
    vals = _load_validations(folder)
    val_steps = [s for s in range(val_every, steps + 1, val_every)]
    missing = [s for s in val_steps if s not in vals]
    if missing:
        raise RuntimeError(f"learn_selection: validations of steps {missing} missing from "
                           f"{folder}")
    vloss = np.stack([vals[s][0] for s in val_steps])  # [n_val, M], population order
    best_i = np.argmin(vloss, axis=0)  # the first of equal minima
    best_logit = np.stack([vals[val_steps[b]][1][m] for m, b in enumerate(best_i)])
    best_step = np.asarray([val_steps[b] for b in best_i])
    inv = np.argsort(order)  # population order -> problem order
    kept = best_logit if keep_best else final
    logs = _train_log(workdir / "metrics.jsonl" if metrics is None else metrics.path,
                      [p.name for p in problems])
    return Selection(
        alpha=np.asarray(jax.nn.sigmoid(kept))[inv], alpha_final=np.asarray(
            jax.nn.sigmoid(final))[inv],
        val_steps=val_steps, val_loss=vloss[:, inv],
        initial_val_loss=init_loss[inv],
        best_step=best_step[inv], train_loss=logs[1], log_steps=logs[0],
        seconds_per_step=res.summary.get("mean_step_s"), keep_best=keep_best,
        median_step_s=res.summary.get("median_step_s"),
        resumed_from=int(res.summary.get("resumed_from") or 0),
        prefix_prompts=int(prefix_stats[0]), prefix_compile_s=float(prefix_stats[1]),
        prefix_run_s=float(prefix_stats[2]))


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
