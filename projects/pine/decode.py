"""Greedy decoding under PINE with a KV cache of keys before RoPE, each step one compiled
program.

The prompt is prefilled into the cache (one jitted call); every new token then runs one jitted
step: it computes its own segment order from its pre-RoPE query and the cached pre-RoPE keys
(:func:`~projects.pine.method.pine_key_positions`), and the core
(:func:`common.attention.key_positions.rope_attention`) re-rotates the cached keys at those
positions. The step's inputs change only in value from token to token (the token, the cache,
the query's position and segment id), so it compiles once per prompt length and method
family. The cache holds one buffer per layer and the layers' weights are sliced from the stack
once (:func:`common.models.layer_stack.unstack`), as in :mod:`common.models.generation`.

:func:`pine_decode_eager` is the same algorithm run op by op (the first version; kept for the
benchmark in ``tools/bench_pine.py``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.attention.masks import Mask
from common.interp import Intervention
from common.models import layer_stack
from common.models.decoder import init_cache
from projects.pine.forward import check_model
from projects.pine.layout import Layout
from projects.pine.method import (
    attention_mask,
    block_plan,
    key_params,
    key_positions_fn,
    method_index,
    rope_table_params,
)


def _prompt_intervention(model, layout: Layout, method: str, total: int, plan) -> Intervention:
    """The prefill's intervention: the method's mask over ``total`` cache slots and its key
    positions for the ``layout.n`` prompt queries."""
    mask = Mask(dense=jnp.asarray(attention_mask(layout, method, layout.n, total))[None, None])
    params = key_params(layout, method, layout.n, total, plan=plan)
    params.update(rope_table_params(model, total))
    return Intervention(mask=mask, key_positions=key_positions_fn(plan[0]), key_params=params)


def _step_intervention(model, layout: Layout, method: str, total: int, t: int,
                       plan) -> Intervention:
    """New token ``t``'s intervention (a suffix token: the model's causal mask over the cache;
    its own positions and segment order)."""
    params = key_params(layout, method, 1, total, layout.n + t, plan)
    params.update(rope_table_params(model, total))
    return Intervention(key_positions=key_positions_fn(plan[0]), key_params=params)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _run(graphdef, state, per_layer, ids, cache, iv):
    """``ids [1, s]`` through the model with ``cache``: ``(logits of the last token [vocab],
    cache)``."""
    model = nnx.merge(graphdef, state)
    logits, cache = model.forward(ids, hooks=iv.hooks(model.config), cache=cache,
                                  per_layer=per_layer, last_only=True)
    return logits[0, -1], cache


def pine_decode(model, layout: Layout, method: str, n_new: int) -> tuple[list[int], np.ndarray]:
    """Greedy decoding of ``n_new`` tokens with a KV cache of keys before RoPE (jitted steps).

    Returns ``(new token ids, logits [n_new, vocab])``: the logits that chose each new token
    (the prompt's last position, then each new token's).
    """
    check_model(model)
    method_index(method)
    total = layout.n + n_new
    plan = block_plan([layout], total)
    graphdef, state = nnx.split(model)
    per_layer = layer_stack.unstack(model.blocks)
    cache = init_cache(model.config, 1, total, per_layer=True)
    logits, cache = _run(graphdef, state, per_layer, jnp.asarray(layout.ids)[None], cache,
                         _prompt_intervention(model, layout, method, total, plan))
    out, new = [logits], []
    for t in range(n_new):
        new.append(int(jnp.argmax(out[-1])))
        if t == n_new - 1:
            break
        logits, cache = _run(graphdef, state, per_layer, jnp.asarray([[new[-1]]], jnp.int32),
                             cache, _step_intervention(model, layout, method, total, t, plan))
        out.append(logits)
    return new, np.stack([np.asarray(o) for o in out])


def pine_decode_eager(model, layout: Layout, method: str,
                      n_new: int) -> tuple[list[int], np.ndarray]:
    """:func:`pine_decode` run eagerly (op by op, the stacked cache): the benchmark's
    baseline."""
    check_model(model)
    method_index(method)
    total = layout.n + n_new
    plan = block_plan([layout], total)
    cache = init_cache(model.config, 1, total)
    iv = _prompt_intervention(model, layout, method, total, plan)
    logits, cache = model.forward(jnp.asarray(layout.ids)[None], hooks=iv.hooks(model.config),
                                  cache=cache)
    out, new = [np.asarray(logits[0, -1])], []
    for t in range(n_new):
        new.append(int(np.argmax(out[-1])))
        if t == n_new - 1:
            break
        step = _step_intervention(model, layout, method, total, t, plan)
        logits, cache = model.forward(jnp.asarray([[new[-1]]]), hooks=step.hooks(model.config),
                                      cache=cache)
        out.append(np.asarray(logits[0, -1]))
    return new, np.stack(out)
