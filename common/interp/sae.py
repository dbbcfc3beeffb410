"""Sparse autoencoders on activations (the successor-heads paper's mod-10 features, §3.2).

An SAE with dictionary size ``f`` on inputs ``x [n, d]``::

    h     = ReLU((x - b_dec) W_enc + b_enc)          [n, f]   feature activations
    x_hat = h · D + b_dec                           [n, d]   D = W_dec with unit-norm rows
    loss  = mean_n ||x - x_hat||² + λ · mean_n ||h||_1

``tied=True`` uses ``W_dec = W_encᵀ`` (rows normalised the same way). The decoder rows are
normalised inside the forward (not by a projection after each step), so the L1 penalty cannot
be dodged by shrinking ``h`` and growing ``D``.

Training belongs above this package: a project trains many SAEs (seeds × λ) side by side as
one population on the shared loop (``common.train``) with :func:`sae_loss` (see
``projects/successor_heads/mod10.py``). :func:`modal_features` finds, per class of inputs
(e.g. value mod 10), the feature that is most often the top-activating one, and how much of the
class it covers; :func:`fvu` is the fraction of variance unexplained.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Params = dict  # {"W_enc" [d, f], "b_enc" [f], "W_dec" [f, d] (untied only), "b_dec" [d]}


def init_sae(key: jax.Array, d: int, f: int, *, tied: bool = False,
             b_dec: jax.Array | None = None) -> Params:
    """Random SAE parameters (``W_enc`` ~ N(0, 1/d); ``b_dec`` the data mean if given)."""
    w = jax.random.normal(key, (d, f), jnp.float32) / np.sqrt(d)
    p = {"W_enc": w, "b_enc": jnp.zeros((f,), jnp.float32),
         "b_dec": jnp.zeros((d,), jnp.float32) if b_dec is None else jnp.asarray(b_dec,
                                                                                jnp.float32)}
    if not tied:
        p["W_dec"] = w.T
    return p


def decoder(p: Params) -> jax.Array:
    """``[f, d]`` unit-norm decoder rows (the feature directions)."""
    w = p["W_dec"] if "W_dec" in p else p["W_enc"].T
    return w / (jnp.linalg.norm(w, axis=-1, keepdims=True) + 1e-8)


def encode(p: Params, x: jax.Array) -> jax.Array:
    """``x [..., d] -> h [..., f]`` feature activations."""
    return jax.nn.relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])


def decode(p: Params, h: jax.Array) -> jax.Array:
    """``h [..., f] -> x_hat [..., d]``."""
    return h @ decoder(p) + p["b_dec"]


def sae_loss(p: Params, x: jax.Array, l1: jax.Array | float) -> jax.Array:
    """Reconstruction MSE (summed over ``d``, mean over inputs) plus ``l1 · mean ||h||_1``."""
    h = encode(p, x)
    err = jnp.sum((decode(p, h) - x) ** 2, axis=-1)
    return jnp.mean(err) + l1 * jnp.mean(jnp.sum(jnp.abs(h), axis=-1))


def fvu(p: Params, x: jax.Array) -> jax.Array:
    """Fraction of variance unexplained: ``Σ||x - x_hat||² / Σ||x - mean x||²``."""
    xh = decode(p, encode(p, x))
    return jnp.sum((x - xh) ** 2) / jnp.sum((x - x.mean(0)) ** 2)


def modal_features(h: np.ndarray, labels: np.ndarray, n_classes: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per class ``c``: the feature most often top-activating on the inputs labelled ``c``,
    and its coverage (the fraction of those inputs where it is the top feature).

    Args:
      h: ``[n, f]`` feature activations; labels: ``[n]`` ints in ``[0, n_classes)``.

    Returns:
      ``(feature [C] int, coverage [C] float)``; feature -1 and coverage 0 for an empty class
      or one whose inputs activate nothing.
    """
    h, labels = np.asarray(h), np.asarray(labels)
    top = np.where(h.max(-1) > 0, h.argmax(-1), -1)
    feat, cov = np.full(n_classes, -1), np.zeros(n_classes)
    for c in range(n_classes):
        t = top[(labels == c) & (top >= 0)]
        n_c = int((labels == c).sum())
        if n_c == 0 or len(t) == 0:
            continue
        vals, counts = np.unique(t, return_counts=True)
        feat[c] = int(vals[np.argmax(counts)])
        cov[c] = counts.max() / n_c
    return feat, cov
