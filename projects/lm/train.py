"""Train target ``lm``: a tiny Llama-style :class:`~common.models.DecoderLM` on token data.

The reference target for meshes and pods (``headlab train lm``; see ``projects/lm/README.md``).

Data: ``data.source = "generated"`` (:class:`~common.data.InducedTokens`, in memory) or
``"tfds"`` (the ``headlab_tokens`` TFDS builder prepared to ArrayRecord under ``data.dir``, read
through ``tfds.data_source`` + grain). The sequences repeat their first half, so the loss on the
second half falls toward zero once the model forms induction heads.

    headlab train lm --mesh data=2,tensor=4 --set train.steps=200 --set model.n_layers=2

Expected with the defaults (600 steps, about 30 s on 2 CPU cores): the copy accuracy on the
second half reaches 1.0 (eval) and the loss falls from ln 127 = 4.84 to about 2.37, close to
the floor of an ideal copier, 15/31 * ln 127 = 2.34 (the 15 prefix targets after the first are
random; the rest can be copied).

``--config finetune`` fine-tunes a pretrained model instead (``model.pretrained``, default
SmolLM2-135M-Instruct, loaded with :func:`common.models.load_pretrained`) on a shipped text task
(``data.source = "icl_task"``: ``$HEADLAB_DATA/icl_tasks/<data.task>.json`` as ``Q: x / A: y``
lines, packed into ``seq_len`` windows; the last ``data.validation_windows`` are held out and
give ``eval/loss``):

    headlab train lm --config finetune --mesh data=2,fsdp=2,tensor=2   # 8 devices
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from common.configs import ConfigError
from common.data import InducedTokens, batched_dataset
from common.train.loop import Task, TrainConfig

DESCRIPTION = "tiny Llama-style decoder LM on induction token data (generated or TFDS)"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Defaults; ``arg="quick"`` is a few-second CPU run, ``"finetune"`` fine-tunes SmolLM2."""
    if arg not in (None, "", "quick", "finetune"):
        raise ConfigError(f"lm: unknown config {arg!r}; use quick or finetune")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=128,
        dtype="float32", attn_backend="reference", scan_layers=True, remat="none",
        pretrained=""))
    c.data = ml_collections.ConfigDict(dict(
        source="generated", seq_len=32, num_examples=4096, global_batch_size=16, dir="",
        task="abstractive/antonym", validation_windows=16))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=3e-3, warmup_steps=20, weight_decay=0.0, clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        steps=600, grad_accum=1, compute_dtype="", log_every=10, checkpoint_every=100,
        keep_checkpoints=3, async_checkpoint=True, eval_every=0, progress=True))
    if arg == "quick":
        c.train.steps = 40
        c.train.checkpoint_every = 20
    if arg == "finetune":
        c.model.pretrained = "smollm2-135m-instruct"
        c.model.attn_backend = "auto"
        c.data.source, c.data.seq_len, c.data.global_batch_size = "icl_task", 64, 8
        c.optim.learning_rate, c.optim.warmup_steps = 1e-4, 5
        c.train.update(steps=40, log_every=5, checkpoint_every=20, eval_every=20)
    return c


def loss_fn(model, batch):
    """Next-token cross-entropy; ``batch["input_ids"] [batch, seq]``."""
    ids = batch["input_ids"]
    logits = model(ids[:, :-1])
    targets = ids[:, 1:]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    acc = (logits.argmax(-1) == targets).mean()
    half = ids.shape[1] // 2
    copy_acc = (logits[:, half:].argmax(-1) == targets[:, half:]).mean()
    return loss, {"accuracy": acc, "copy_accuracy": copy_acc}


def make_optimizer(c: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with global-norm clipping and a linear warm-up; ``(tx, learning-rate schedule)``."""
    o = c.optim
    schedule = optax.linear_schedule(0.0, o.learning_rate, max(o.warmup_steps, 1))
    return optax.chain(optax.clip_by_global_norm(o.clip_norm),
                       optax.adamw(schedule, weight_decay=o.weight_decay)), schedule


def pretrained_start(name_or_path: str, *, dtype: str, attn_backend: str):
    """``(ModelConfig, tokenizer, init_params)`` of a pretrained checkpoint.

    Only the checkpoint's config and tokenizer are read here (``open_checkpoint`` is lazy);
    ``init_params(mesh, rules)`` later loads the weights with ``load_pretrained(..., mesh=mesh)``,
    each device reading its own slice of each tensor, already on its training sharding.
    """
    from common.models import load_pretrained
    from common.models.config import config_from_hf
    from common.models.pretrained import KNOWN_MODELS
    from common.weights import default_model_path, open_checkpoint

    path = (default_model_path(name_or_path) if name_or_path in KNOWN_MODELS
            else pathlib.Path(name_or_path).expanduser())
    if not path.exists():
        raise FileNotFoundError(f"model.pretrained={name_or_path!r}: neither a known model "
                                f"{KNOWN_MODELS} nor an existing .gguf file or HF folder")
    ckpt = open_checkpoint(path)
    if ckpt.tokenizer is None:
        raise FileNotFoundError(f"{path}: no tokenizer (tokenizer.json or GGUF metadata)")
    cfg = config_from_hf(ckpt.arch, ckpt.config, dtype=dtype, attn_backend=attn_backend)

    def init_params(mesh, rules):
        model, _ = load_pretrained(path, mesh=mesh, rules=rules, dtype=dtype,
                                   attn_backend=attn_backend, require_tokenizer=False)
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    return cfg, ckpt.tokenizer, init_params


def build(c: ml_collections.ConfigDict, workdir: pathlib.Path):
    """``(task, tx, dataset, TrainConfig, eval_fn)`` for :func:`common.train.train`."""
    from common.models import DecoderLM, ModelConfig

    m = c.model
    compute = c.train.compute_dtype or None
    seed = int(c.seed)
    tx, schedule = make_optimizer(c)
    init_params, tokenizer = None, None
    if m.pretrained:
        mcfg, tokenizer, init_params = pretrained_start(m.pretrained, dtype=compute or m.dtype,
                                                        attn_backend=m.attn_backend)
        mcfg = dataclasses.replace(mcfg, scan_layers=m.scan_layers, remat=m.remat)
    else:
        mcfg = ModelConfig(arch="llama", vocab_size=m.vocab_size, d_model=m.d_model,
                           n_layers=m.n_layers, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads,
                           d_mlp=m.d_mlp, attn_backend=m.attn_backend,
                           dtype=compute or m.dtype, max_position=c.data.seq_len,
                           scan_layers=m.scan_layers, remat=m.remat)
    task = Task(make_model=lambda: DecoderLM(mcfg, rngs=nnx.Rngs(seed)), loss_fn=loss_fn,
                batch_axes={"input_ids": ("batch", "seq")}, init_params=init_params,
                lr_schedule=schedule, token_field="input_ids")
    d = c.data
    if d.source == "icl_task":
        from common.data.text import PackedTokens, icl_task_texts

        if tokenizer is None:
            raise ValueError("data.source='icl_task' needs a pretrained model's tokenizer "
                             "(set model.pretrained, or use --config finetune)")
        texts = icl_task_texts(d.task)
        held = int(d.validation_windows)
        source = PackedTokens(texts, tokenizer.encode, d.seq_len, stop=-held)
        eval_source = PackedTokens(texts, tokenizer.encode, d.seq_len, start=-held)
    elif d.source == "generated":
        source = InducedTokens(d.num_examples, d.seq_len, m.vocab_size, seed=seed)
        eval_source = InducedTokens(256, d.seq_len, m.vocab_size, seed=seed + 1)
    elif d.source == "tfds":
        from common.data.tfds_tokens import prepare_tokens, tokens_source

        data_dir = pathlib.Path(d.dir or workdir / "tfds")
        if jax.process_index() == 0:
            prepare_tokens(data_dir)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("headlab_tfds_prepared")
        source = tokens_source(data_dir, "train")
        eval_source = tokens_source(data_dir, "validation")
    else:
        raise ValueError(f"data.source must be 'generated', 'tfds' or 'icl_task', got "
                         f"{d.source!r}")
    dataset = batched_dataset(source, global_batch_size=d.global_batch_size, seed=seed)
    t = c.train
    config = TrainConfig(
        steps=t.steps, grad_accum=t.grad_accum, compute_dtype=compute, log_every=t.log_every,
        checkpoint_every=t.checkpoint_every, keep_checkpoints=t.keep_checkpoints,
        async_checkpoint=t.async_checkpoint, eval_every=t.eval_every, progress=t.progress)

    eval_ids = np.stack([eval_source[i]["input_ids"] for i in range(min(64, len(eval_source)))])

    @jax.jit
    def _eval(model, ids):
        loss, aux = loss_fn(model, {"input_ids": ids})
        return {"loss": loss, **aux}

    def eval_fn(model, step):
        return jax.device_get(_eval(model, jnp.asarray(eval_ids)))

    return task, tx, dataset, config, eval_fn
