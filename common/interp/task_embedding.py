"""Task embeddings and their soft injection into the heads' outputs (Park & Rhee 2025).

A *task embedding* is, per (layer, head), the mean of the head's output ``z`` (the input of the
output projection) at the last token of few-shot prompts of a task: ``t [n_layers, n_heads,
d_head]``. *Soft injection* mixes it into a prompt's ``z`` at its prediction position with one
weight ``a`` per head, ``z' = (1 - a) z + a t`` (``Intervention.mix_a / mix_v / mix_where``).

Prompts of different lengths are right-padded to a common length: under the causal mask the
padding never reaches the last real token, so ``z`` and the logits at ``last`` equal those of
the unpadded prompt. Lengths are rounded up to a power of two (:func:`bucket`) so that a few
compiled programs serve every prompt.

    ids, last = pad_right(prompts)                           # [b, T], [b]
    t = task_embedding(model, prompts)                       # [L, H, d_head]
    iv = injection(a, t, last, ids.shape[1])                 # a: [L, H]
    logits = logits_at(model, ids, last, intervention=iv)    # [b, vocab]

    cache = prefix_cache(model, ids, last)                   # once per prompt
    iv1 = injection(a, t, jnp.zeros_like(last), 1)           # the token at last alone
    logits = logits_at(model, ids, last, intervention=iv1, prefix=cache)   # the same
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common.attention.hooks import resolve_hooks
from common.attention.masks import Mask
from common.interp.intervention import Intervention


def bucket(n: int, minimum: int = 8) -> int:
    """The smallest power of two ``>= max(n, minimum)``."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


def fine_bucket(n: int, minimum: int = 8, step: int = 64) -> int:
    """:func:`bucket` up to ``step``, then the next multiple of ``step``: long prompts waste
    less padding (a 130-token prompt pads to 192, not 256) for a few more compiled shapes."""
    n = max(int(n), 1)
    return bucket(n, minimum) if n <= step else -(-n // step) * step


def pad_right(prompts: Sequence[Sequence[int]], *, length: int | None = None, pad_id: int = 0,
              minimum: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists into one array.

    Args:
      prompts: ``b`` token id lists, each non-empty.
      length: the padded length (default: :func:`bucket` of the longest prompt).

    Returns:
      ``(ids [b, length] int32, last [b] int32)``: ``last[i]`` is the index of prompt ``i``'s
      last token.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("pad_right: needs at least one prompt, each with at least one token")
    longest = max(len(p) for p in prompts)
    length = bucket(longest, minimum) if length is None else int(length)
    if length < longest:
        raise ValueError(f"pad_right: length {length} is shorter than the longest prompt "
                         f"({longest} tokens)")
    ids = np.full((len(prompts), length), pad_id, np.int32)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = p
    last = np.asarray([len(p) - 1 for p in prompts], np.int32)
    return ids, last


def position_mask(last: jax.Array, seq: int) -> jax.Array:
    """``[b, seq]`` bool, True only at each row's ``last`` position."""
    return jnp.arange(seq)[None, :] == jnp.asarray(last)[:, None]


def injection(a: jax.Array, v: jax.Array, last: jax.Array, seq: int) -> Intervention:
    """Soft injection at each prompt's last token: ``z' = (1 - a) z + a v`` there only.

    Args:
      a: ``[n_layers, n_heads]`` mixing weights (``sigmoid`` of the learnt logits).
      v: ``[n_layers, n_heads, d_head]`` the task embedding.
      last: ``[b]`` index of each prompt's last token; seq: the padded length.
    """
    return Intervention(mix_a=a, mix_v=v, mix_where=position_mask(last, seq))


def prefix_cache(model, ids: jax.Array, last: jax.Array, *,
                 per_layer: tuple | None = None):
    """The unedited model's keys and values of each row's tokens before ``last``: a
    :class:`~common.models.decoder.KVCache` of ``T + 1`` slots for ``ids [b, T]`` (slot ``t``
    valid for row ``i`` when ``t < last[i]``; the last slot is left for the token at
    ``last``), one buffer per layer with ``per_layer``. With it :func:`logits_at` runs only
    the token at ``last``. Traceable; one forward without the unembedding."""
    from common.models.decoder import init_cache

    ids = jnp.asarray(ids, jnp.int32)
    b, seq = ids.shape
    cache = init_cache(model.config, b, seq + 1, per_layer=per_layer is not None)
    before = jnp.arange(seq)[None, :] < jnp.asarray(last, jnp.int32)[:, None]
    return model.forward(ids, cache=cache, token_valid=before, per_layer=per_layer,
                         logits=False)[1]


def logits_at(model, ids: jax.Array, last: jax.Array, *,
              intervention: Intervention | None = None,
              per_layer: tuple | None = None, prefix=None) -> jax.Array:
    """Next-token logits at each row's last real token, ``[b, vocab]`` float32.

    Runs the blocks on the right-padded ``ids [b, T]`` and unembeds only the ``last [b]``
    positions (not the whole sequence). Traceable: call it inside your own ``jax.jit`` /
    ``jax.grad`` (the mixing weights of ``intervention`` are differentiable).

    ``per_layer``: the layers' weights sliced out of the stack once
    (:func:`~common.models.layer_stack.unstack`), for gradients through a frozen model: the
    layers then run unrolled on their own arrays, where the scanned stack slices (copies)
    every layer's weights in the forward and again in the backward loop on XLA:CPU.

    ``prefix``: :func:`prefix_cache` of ``ids`` (computed once per prompt, e.g. before a
    training loop): only the token at ``last`` runs, reading the earlier tokens' keys and
    values from the cache. The same logits when ``intervention`` edits that token alone (soft
    injection): under the causal mask the tokens before it do not depend on it. The
    intervention is then that of a one-token sequence (position masks ``[b, 1]``, e.g.
    ``injection(a, v, zeros(b), 1)``). A gradient step at batch 1 then multiplies every
    weight by one row instead of ``T``: on XLA:CPU, 30 layers of SmolLM2's products took 46.6
    ms forward and backward with 8 rows against 28.6 ms with one (18 against 30 GB/s of
    weights read; presumably the GEMM kernel packs each weight for a few rows).
    """
    ids = jnp.asarray(ids)
    if prefix is not None:
        where = getattr(intervention, "mix_where", None)
        if where is not None and where.shape[-1] != 1:
            raise ValueError(f"logits_at(prefix=...): the intervention must be that of the one "
                             f"token at last (mix_where [b, 1]), got mix_where {where.shape}")
        idx = jnp.asarray(last, jnp.int32)[:, None]
        logits, _ = model.forward(jnp.take_along_axis(ids, idx, axis=1), positions=idx,
                                  cache=prefix, hooks=resolve_hooks(intervention, model.config),
                                  per_layer=per_layer)
        return logits[:, 0]
    b, seq = ids.shape
    positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (b, seq))
    hooks = resolve_hooks(intervention, model.config)
    x = model.embed_tokens(ids, positions)
    x = model.run_blocks(x, positions=positions, mask=Mask(causal=True), hooks=hooks,
                         per_layer=per_layer)
    x = jnp.take_along_axis(x, jnp.asarray(last, jnp.int32)[:, None, None], axis=1)
    return model.unembed(x, hooks)[:, 0]


def first_token_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Cross-entropy of ``target [b]`` under ``logits [b, vocab]``, per row ``[b]``."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, jnp.asarray(target, jnp.int32)[:, None], axis=-1)[:, 0]


def head_outputs_at(model, ids: jax.Array, last: jax.Array) -> jax.Array:
    """Every head's ``z`` at each row's ``last`` token: ``[b, n_layers, n_heads, d_head]``.

    One jitted forward (``run_with_cache(names_filter="z")``; the unembedding of the final
    position only).
    """
    from common.models.capture import run_with_cache

    _, cache = run_with_cache(model, jnp.asarray(ids), names_filter="z", last_only=True)
    z = jnp.stack([cache["z", layer] for layer in range(model.config.n_layers)], axis=1)
    idx = jnp.asarray(last, jnp.int32)[:, None, None, None, None]
    return jnp.take_along_axis(z, idx, axis=2)[:, :, 0]  # [b, L, H, D]


def sites_at(model, ids: jax.Array, last: jax.Array, names: Sequence[str]) -> dict[str, jax.Array]:
    """Each site of ``names`` at each row's ``last`` token, every layer stacked on axis 1:
    ``z [b, n_layers, n_heads, d_head]``, ``resid_post [b, n_layers, d_model]`` (the residual
    stream leaving each block: Hendel et al.'s task vector at the last token), ... One jitted
    forward (``run_with_cache``, the final position only unembedded)."""
    from common.models.capture import run_with_cache

    _, cache = run_with_cache(model, jnp.asarray(ids), names_filter=list(names), last_only=True)
    idx = jnp.asarray(last, jnp.int32)
    out = {}
    for name in names:
        x = jnp.stack([cache[name, layer] for layer in range(model.config.n_layers)], axis=1)
        i = idx.reshape((-1,) + (1,) * (x.ndim - 1))
        out[name] = jnp.take_along_axis(x, i, axis=2)[:, :, 0]
    return out


def mean_at_last(model, prompts: Sequence[Sequence[int]], names: Sequence[str] = ("z",), *,
                 batch_size: int = 8, pad_id: int = 0, progress=None,
                 keep: Sequence[int] = ()) -> dict[str, jax.Array]:
    """The mean over ``prompts`` of each site of ``names`` at the last token (shapes of
    :func:`sites_at` without the batch axis, float32), batched as :func:`task_embedding`
    (lengths padded by :func:`fine_bucket`).

    ``keep``: indices of prompts whose own values are returned too, as ``"<name>/kept"``
    ``[len(keep), ...]`` (an embedding from one prompt, ``M = 1``, without another forward).
    """
    if not prompts:
        raise ValueError("mean_at_last: needs at least one prompt")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    total: dict[str, jax.Array] = {}
    kept: dict[tuple[str, int], jax.Array] = {}
    for rows in (progress(batches) if progress else batches):
        chunk = [prompts[i] for i in rows]
        chunk += [chunk[0]] * (batch_size - len(chunk))
        ids, last = pad_right(chunk, pad_id=pad_id,
                              length=fine_bucket(max(len(c) for c in chunk)))
        got = sites_at(model, ids, last, names)
        for name, x in got.items():
            s = jnp.sum(x[:len(rows)].astype(jnp.float32), axis=0)
            total[name] = s if name not in total else total[name] + s
            for j, r in enumerate(rows):
                if r in keep:
                    kept[name, r] = x[j].astype(jnp.float32)
    out = {name: x / len(prompts) for name, x in total.items()}
    if keep:
        out.update({f"{name}/kept": jnp.stack([kept[name, r] for r in keep]) for name in names})
    return out


def task_embedding(model, prompts: Sequence[Sequence[int]], *, batch_size: int = 8,
                   pad_id: int = 0, progress=None) -> jax.Array:
    """Mean of every head's ``z`` at the last token of ``prompts``: ``[n_layers, n_heads,
    d_head]`` float32.

    Prompts are sorted by length and run ``batch_size`` at a time, each batch right-padded to
    a power-of-two length (a short last batch is filled with copies of its first prompt and
    those rows dropped), so a task compiles a handful of programs.

    Args:
      prompts: token id lists (few-shot prompts ending where the answer would start).
      progress: optional ``iterable -> iterable`` wrapper over the batches (a progress bar).
    """
    if not prompts:
        raise ValueError("task_embedding: needs at least one prompt")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    total = None
    for rows in (progress(batches) if progress else batches):
        chunk = [prompts[i] for i in rows]
        chunk += [chunk[0]] * (batch_size - len(chunk))
        ids, last = pad_right(chunk, pad_id=pad_id)
        z = head_outputs_at(model, ids, last)[:len(rows)].astype(jnp.float32)
        s = jnp.sum(z, axis=0)
        total = s if total is None else total + s
    return total / len(prompts)
