"""Training on the shared loop (:func:`common.train.train`): teacher-forced cross-entropy over
every decoder position (predict ``f_1 … f_T, EOS``; PAD ignored), Adam with gradient clipping at
norm 1.0, batches from a grain pipeline over the training trials (shuffled per epoch, resumable:
the iterator state is saved with each orbax checkpoint), and model selection on the behavioural
error Δ of greedy decodes on the validation set (the paper's early-stopping monitor; the best
parameters are kept in ``best_params.npz``; training runs to ``steps``, no patience stop).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common.data import ArraySource, batched_dataset
from common.dropout import fold_seed
from common.rundir import MetricsWriter, atomic_write_text
from common.sharding import make_mesh
from common.train import Task, TrainConfig
from common.train import train as train_loop
from projects.oat import metrics as M
from projects.oat.model import OAT, OATConfig, decode, to_scanpaths

BATCH_AXES = {"crops": ("batch", None, None, None, None), "target": ("batch",),
              "dec_in": ("batch", None), "dec_out": ("batch", None), "uid": ("batch",),
              "seed": ("batch",)}


def loss_and_metrics(model: OAT, batch: dict, *, train: bool = True
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy over non-PAD targets (dropout on when ``train``) and accuracy.

    Dropout masks are hashed (:mod:`common.dropout`) from one seed per step, made from the
    batch's ``seed`` (its index in the pipeline, so a resumed run draws the same masks):
    ``jax.random`` masks (threefry or XLA's RngBitGenerator) cost a third to a half of a
    training step on CPU.
    """
    seed = fold_seed(17, batch["seed"][0]) if train else None
    logits = model(batch["crops"], batch["target"], batch["dec_in"], seed=seed)
    tgt = batch["dec_out"]
    valid = tgt != model.cfg.pad
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    n = jnp.maximum(valid.sum(), 1)
    acc = jnp.sum((jnp.argmax(logits, -1) == tgt) & valid) / n
    return jnp.sum(jnp.where(valid, nll, 0.0)) / n, {"accuracy": acc}


def make_task(cfg: OATConfig, pe_table: np.ndarray, max_len: int, seed: int) -> Task:
    """The :class:`common.train.Task` of one OAT model (decoder length ``max_len + 1``)."""
    return Task(make_model=lambda: OAT(cfg, pe_table, max_len + 1, rngs=nnx.Rngs(seed)),
                loss_fn=loss_and_metrics, batch_axes=BATCH_AXES)


def optimiser(lr: float, clip: float) -> optax.GradientTransformation:
    """Adam (default betas) after global-norm clipping (the official Lightning setup)."""
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(lr))


@dataclasses.dataclass
class Decoder:
    """Jitted greedy / sampled decoding of a model (compiled once per batch shape)."""

    max_len: int

    def __post_init__(self):
        self._fns: dict = {}

    def __call__(self, model: OAT, crops: np.ndarray, target: np.ndarray,
                 key: jax.Array | None = None, batch: int = 64) -> np.ndarray:
        """``[B, max_len]`` tokens for ``crops [B, N, H, W, 3]`` (in chunks of ``batch``)."""
        graphdef, state = nnx.split(model)
        sampled = key is not None
        if sampled not in self._fns:
            def run(state, crops, target, key):
                return decode(nnx.merge(graphdef, state), crops, target, self.max_len,
                              key if sampled else None)
            self._fns[sampled] = jax.jit(run)
        fn = self._fns[sampled]
        out = []
        k = key if sampled else jax.random.key(0)
        for i in range(0, len(crops), batch):
            c, t = crops[i:i + batch], target[i:i + batch]
            pad = batch - len(c)  # one compiled shape for every call
            if pad:
                c = np.concatenate([c, np.repeat(c[-1:], pad, 0)])
                t = np.concatenate([t, np.repeat(t[-1:], pad, 0)])
            out.append(np.asarray(fn(state, c, t, jax.random.fold_in(k, i)))[: batch - pad])
        return np.concatenate(out)


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict → ``{"a/b/c": array}``."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "/"))
        else:
            out[name] = np.asarray(v)
    return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for name, v in flat.items():
        d = out
        *parents, leaf = name.split("/")
        for p in parents:
            d = d.setdefault(int(p) if p.isdigit() else p, {})
        d[int(leaf) if leaf.isdigit() else leaf] = v
    return out


def _save_best(path: pathlib.Path, params: dict, info: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **flatten(params))
    tmp.replace(path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(info))


@dataclasses.dataclass
class Trained:
    """What :func:`train` returns: the last and the best-on-validation models and the loop's
    summary (``best`` = ``{"step", "val_delta"}``)."""

    last: OAT
    best: OAT
    best_info: dict
    loop: dict


def train(cfg: OATConfig, pe_table: np.ndarray, arrays: dict[str, np.ndarray],
          val: dict[str, np.ndarray], val_paths: Sequence[np.ndarray], *, max_len: int,
          steps: int, batch: int, lr: float, clip: float, seed: int, log_every: int,
          ckpt_every: int, eval_every: int, workdir: pathlib.Path, meta: dict,
          metrics: MetricsWriter | None = None, progress: bool = True,
          on_eval: Callable[[int, float], None] | None = None) -> Trained:
    """Train to ``steps`` (resuming from ``workdir/checkpoints``); see the module docstring.

    Args:
      arrays: training inputs from :func:`projects.oat.data.to_arrays`.
      val, val_paths: validation inputs and their human scanpaths (for Δ).
      meta: what a checkpoint must agree on to be resumed (the config).
    """
    workdir = pathlib.Path(workdir)
    source = ArraySource({k: arrays[k] for k in ("crops", "target", "dec_in", "dec_out", "uid")})
    ds = batched_dataset(source, global_batch_size=batch, seed=seed, process_index=0,
                         process_count=1)
    ds = ds.map_with_index(lambda i, b: {**b, "seed": np.full(len(b["uid"]), i, np.int32)})
    human = M.mean_behaviour(val_paths, val["target"])
    dec = Decoder(max_len)
    best_path = workdir / "best_params.npz"
    best_json = best_path.with_suffix(".json")
    best = json.loads(best_json.read_text()) if best_json.exists() else {"val_delta": None}

    def eval_fn(model: OAT, step: int) -> dict:
        toks = dec(model, val["crops"], val["target"])
        paths = to_scanpaths(toks, cfg.eos)
        paths = [p if len(p) else t[:1] for p, t in zip(paths, toks, strict=True)]
        delta = M.behavioural_error(M.mean_behaviour(paths, val["target"]), human)
        ss = float(np.mean([M.sequence_score(p, h) for p, h in zip(paths, val_paths,
                                                                   strict=True)]))
        if best["val_delta"] is None or delta < best["val_delta"]:
            best.update(step=step, val_delta=delta)
            params = jax.device_get(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
            _save_best(best_path, params, best)
        if on_eval is not None:
            on_eval(step, delta)
        return {"val_delta": delta, "val_sequence_score": ss}

    tc = TrainConfig(steps=steps, log_every=log_every, checkpoint_every=ckpt_every,
                     keep_checkpoints=2, eval_every=eval_every, progress=progress)
    result = train_loop(make_task(cfg, pe_table, max_len, seed), optimiser(lr, clip), ds, tc,
                        make_mesh(), workdir, eval_fn=eval_fn, meta=meta, metrics=metrics)
    last = result.model()
    if best_path.exists():
        with np.load(best_path) as z:
            params = unflatten({k: z[k] for k in z.files})
        best_model = result.model_def.bind(jax.tree.map(jnp.asarray, params))
    else:
        best_model, best = last, {"step": steps, "val_delta": None}
    return Trained(last=last, best=best_model, best_info=dict(best), loop=result.summary)
