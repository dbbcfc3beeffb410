"""The model's forward against a brute-force numpy loop over prompts, heads and tokens."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projects.icl_regression import data, model

ACT_LOOP = {  # f(ν) written out again, independently of model.ACTIVATIONS
    "affine": lambda v, c: max(1.0 + c * v, 0.0),
    "quadratic": lambda v, c: (1.0 + c * v) ** 2,
    "tanh": lambda v, c: 1.0 + math.tanh(c * v),
}


def brute_force(params, context, query, linear=False, act=None, c=1.0):
    """ŷ_q = Σ_h O_h V_h Σ_l softmax_l((Q_h z_q)ᵀ(K_h z_l)/sqrt(D)) z_l, one loop per index."""
    w_q, w_k, w_v, w_o = (np.asarray(params[k], np.float64) for k in ("w_q", "w_k", "w_v", "w_o"))
    b, length, width = context.shape
    heads, n_out = w_o.shape[0], w_o.shape[2]
    out = np.zeros((b, n_out))
    for i in range(b):
        for h in range(heads):
            q_vec = w_q[:, h, :].T @ query[i]  # Q_h z_q
            logits = np.array([(w_k[:, h, :].T @ context[i, l]) @ q_vec / math.sqrt(width)
                               for l in range(length)])
            if linear:
                p = logits / length
            elif act is not None:
                p = np.array([ACT_LOOP[act](v, c) for v in logits])
                p /= p.sum()
            else:
                p = np.exp(logits - logits.max())
                p /= p.sum()
            mix = sum(p[l] * (w_v[:, h, :].T @ context[i, l]) for l in range(length))
            out[i] += w_o[h].T @ mix
    return out


@pytest.fixture(scope="module")
def setup():
    key = jax.random.key(3)
    pr = data.sample_prompts(key, 4, 7, 3, 0.1)
    params = model.init_params(jax.random.key(5), 4, 3)
    params = jax.tree.map(lambda x: 3.0 * x, params)  # sharper softmax than at init
    return params, np.asarray(pr.context, np.float64), np.asarray(pr.query, np.float64)


@pytest.mark.parametrize("fn", [model.forward, model.forward_projected])
@pytest.mark.parametrize("backend", ["reference", "xla"])
def test_softmax_forward_matches_loop(setup, fn, backend):
    params, ctx, q = setup
    got = np.asarray(fn(params, jnp.asarray(ctx, jnp.float32), jnp.asarray(q, jnp.float32),
                        backend=backend))
    np.testing.assert_allclose(got, brute_force(params, ctx, q), rtol=2e-5, atol=2e-6)


def test_linear_forward_matches_loop(setup):
    params, ctx, q = setup
    c32, q32 = jnp.asarray(ctx, jnp.float32), jnp.asarray(q, jnp.float32)
    want = brute_force(params, ctx, q, linear=True)
    np.testing.assert_allclose(np.asarray(model.forward_linear(params, c32, q32)), want,
                               rtol=2e-5, atol=2e-6)
    # A hard-coded normaliser 1/L₀ (the training length) instead of the prompt's own 1/L.
    np.testing.assert_allclose(
        np.asarray(model.forward_linear(params, c32, q32, norm_length=3)), want * 7 / 3,
        rtol=2e-5, atol=2e-6)


def test_multi_output_and_head_mask():
    key = jax.random.key(0)
    masks = jnp.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    pr = data.sample_prompts(key, 3, 5, 3, 0.1, task_masks=masks)
    params = model.init_params(jax.random.key(1), 5, 2, n_out=2)
    ctx, q = np.asarray(pr.context, np.float64), np.asarray(pr.query, np.float64)
    np.testing.assert_allclose(np.asarray(model.forward(params, pr.context, pr.query)),
                               brute_force(params, ctx, q), rtol=2e-5, atol=2e-6)
    only_first = jax.tree.map(lambda x: x, params)
    only_first["w_o"] = params["w_o"].at[1].set(0.0)
    np.testing.assert_allclose(
        np.asarray(model.forward(params, pr.context, pr.query, mask=jnp.array([1.0, 0.0]))),
        brute_force(only_first, ctx, q), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("act", sorted(model.ACTIVATIONS))
def test_activation_forward_matches_loop(setup, act):
    params, ctx, q = setup
    params = jax.tree.map(lambda x: x / 3.0, params)  # logits near 0: 1 + Cx not clipped
    c = 0.7
    got = model.forward_activation(params, jnp.asarray(ctx, jnp.float32),
                                   jnp.asarray(q, jnp.float32), activation=act, c=c)
    np.testing.assert_allclose(np.asarray(got), brute_force(params, ctx, q, act=act, c=c),
                               rtol=2e-5, atol=2e-6)


def test_affine_activation_is_clipped_at_zero(setup):
    params, ctx, q = setup
    big = jax.tree.map(lambda x: 4.0 * x, params)  # logits well below -1: clipping is active
    logits = np.einsum("bld,hde,be->bhl", ctx, np.asarray(model.circuits(big)[0]), q)
    assert (logits < -1).any()
    got = model.forward_activation(big, jnp.asarray(ctx, jnp.float32), jnp.asarray(q, jnp.float32),
                                   activation="affine", c=1.0)
    np.testing.assert_allclose(np.asarray(got), brute_force(big, ctx, q, act="affine"),
                               rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="unknown activation"):
        model.forward_activation(big, jnp.asarray(ctx), jnp.asarray(q), activation="relu")


@pytest.mark.parametrize("fn", [model.forward, model.forward_linear,
                                lambda *a, **k: model.forward_activation(*a, **k, activation="tanh")])
def test_padding_equals_short_prompt(setup, fn):
    params, ctx, q = setup
    short = fn(params, jnp.asarray(ctx[:, :4], jnp.float32), jnp.asarray(q, jnp.float32))
    garbage = ctx.copy()
    garbage[:, 4:] = 100.0  # padded tokens must not matter
    valid = jnp.broadcast_to(jnp.arange(7) < 4, (4, 7))
    padded = fn(params, jnp.asarray(garbage, jnp.float32), jnp.asarray(q, jnp.float32),
                kv_valid=valid)
    np.testing.assert_allclose(np.asarray(padded), np.asarray(short), rtol=1e-5, atol=1e-6)


def test_circuits_are_the_products():
    params = model.init_params(jax.random.key(2), 6, 2)
    kq, ov = model.circuits(params)
    for h in range(2):
        q_mat = np.asarray(params["w_q"][:, h, :]).T  # Q_h [head_dim, D]
        k_mat = np.asarray(params["w_k"][:, h, :]).T
        v_mat = np.asarray(params["w_v"][:, h, :]).T
        o_mat = np.asarray(params["w_o"][h]).T  # O_h [N, head_dim]
        np.testing.assert_allclose(np.asarray(kq[h]), k_mat.T @ q_mat / math.sqrt(6), rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(np.asarray(ov[h]), o_mat @ v_mat, rtol=1e-5, atol=1e-7)


def test_init_is_pytorch_default():
    p = model.init_params(jax.random.key(0), 6, 4)
    assert p["w_q"].shape == (6, 4, 6) and p["w_o"].shape == (4, 6, 1)
    assert float(jnp.abs(p["w_k"]).max()) <= 1 / math.sqrt(6)
    assert float(jnp.abs(p["w_k"]).max()) > 0.9 / math.sqrt(6)
    assert float(jnp.abs(p["w_o"]).max()) <= 1 / math.sqrt(24)
    with pytest.raises(ValueError, match="heads must be >= 1"):
        model.init_params(jax.random.key(0), 6, 0)


def test_data_distribution():
    cov = data.toeplitz_covariance(3, 0.5)
    cov_sqrt = jnp.asarray(data.covariance_sqrt(cov), jnp.float32)

    @jax.jit
    def draws(key):
        k1, k2, k3 = jax.random.split(key, 3)
        pr = data.sample_prompts(k1, 4000, 10, 5, 0.1)
        resid = pr.y[..., 0] - jnp.einsum("bld,bd->bl", pr.x, pr.beta)
        beta_sq = jnp.mean(jnp.sum(pr.beta**2, -1))
        qlast = jnp.abs(pr.query[:, -1]).max()
        xs = data.sample_prompts(k2, 20000, 5, 3, 0.1, cov_sqrt).x.reshape(-1, 3)
        t = data.sample_prompts(k3, 8000, 4, 4, 0.0, None, jnp.array([[1.0, 1, 0, 0]]))
        sub = t.y[..., 0] - jnp.einsum("bld,bd->bl", t.x[..., :2], t.beta[:, :2])
        return resid, beta_sq, qlast, pr.context.shape, xs.T @ xs / xs.shape[0], sub

    resid, beta_sq, qlast, shape, emp, sub = draws(jax.random.key(0))
    assert abs(float(np.var(resid)) - 0.1) < 0.005
    assert abs(float(beta_sq) - 1.0) < 0.03  # β ~ N(0, I/d)
    assert shape == (4000, 10, 6) and float(qlast) == 0.0
    np.testing.assert_allclose(np.asarray(emp), cov, atol=0.02)
    assert float(np.abs(sub).max()) < 1e-5  # task n reads only its subset S_n
