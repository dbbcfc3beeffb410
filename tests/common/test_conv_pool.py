"""common.conv_pool: conv → max pool as patch matrix products, against a brute-force loop and
PyTorch's autograd (``conv2d`` then ``max_pool2d``), ties included."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import common.conv_pool as cp
from common import native
from common.conv_pool import bias_relu, conv_max_pool


def brute_force(x: np.ndarray, w: np.ndarray, pool: int) -> np.ndarray:
    """Python loops over every output position, window and kernel tap (float64)."""
    n, h, wd, _ = x.shape
    k, c_out = w.shape[0], w.shape[3]
    ho, wo = h - k + 1, wd - k + 1
    y = np.zeros((n, ho, wo, c_out))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i:i + k, j:j + k, :].astype(np.float64)  # [n, k, k, C_in]
            y[:, i, j, :] = np.einsum("nabc,abco->no", patch, w.astype(np.float64))
    hp, wp = ho // pool, wo // pool
    out = np.full((n, hp, wp, c_out), -np.inf)
    for i in range(hp):
        for j in range(wp):
            for a in range(pool):
                for b in range(pool):
                    out[:, i, j] = np.maximum(out[:, i, j], y[:, i * pool + a, j * pool + b])
    return out


def torch_grads(x, w, pool, g):
    """Gradients of ``<max_pool2d(conv2d(x, w)), g>`` w.r.t. x and w (NHWC / HWIO layouts)."""
    xt = torch.tensor(np.transpose(x, (0, 3, 1, 2)), requires_grad=True)
    wt = torch.tensor(np.transpose(w, (3, 2, 0, 1)), requires_grad=True)
    out = torch.nn.functional.max_pool2d(torch.nn.functional.conv2d(xt, wt), pool)
    (out * torch.tensor(np.transpose(g, (0, 3, 1, 2)))).sum().backward()
    return (np.transpose(xt.grad.numpy(), (0, 2, 3, 1)), np.transpose(wt.grad.numpy(), (2, 3, 1, 0)),
            np.transpose(out.detach().numpy(), (0, 2, 3, 1)))


def require_native() -> None:
    """The C++ kernels must build: skipped only on a machine without a C++ compiler, unless
    ``HEADLAB_REQUIRE_NATIVE=1`` (``.ci/run``, which installs g++); ``HEADLAB_NATIVE=0`` opts out.
    A compiler that fails raises, with its message."""
    if os.environ.get("HEADLAB_NATIVE") == "0":
        pytest.skip("HEADLAB_NATIVE=0")
    if os.environ.get("HEADLAB_REQUIRE_NATIVE") != "1" and not native.has_compiler():
        pytest.skip("no C++ compiler (install g++) for common/native")
    native.library()  # raises NativeBuildError with the compiler's message


CASES = [  # (n, H, W, C_in, C_out, k, pool): remainders the pool drops, pool 1, one channel
    (3, 17, 12, 3, 4, 5, 3),
    (2, 9, 8, 2, 3, 3, 1),
    (4, 11, 14, 1, 2, 3, 2),
    (2, 10, 9, 16, 32, 3, 3),  # whole 16-channel blocks (OAT's second layer)
    (2, 8, 11, 17, 18, 2, 2),  # both channel counts padded in the native kernels, an even kernel
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", ["patches, chunks", "patches", "xla", "native"])
def test_values_and_gradients_match_brute_force_and_torch(case, path, monkeypatch):
    # several scan chunks (the last one padded) or one; or XLA's convolution; or the C++ kernel
    # (C_out padded to its 16-channel blocks here)
    monkeypatch.setattr(cp, "CHUNK_POSITIONS", 10 if path == "patches, chunks" else 65_000)
    monkeypatch.setattr(cp, "PATCH_MAX_CIN", 0 if path == "xla" else 4)
    monkeypatch.setattr(cp, "NATIVE_MAX_CIN", 64 if path == "native" else 0)
    if path == "native":
        require_native()
    n, h, wd, c_in, c_out, k, pool = case
    rng = np.random.default_rng(sum(case))
    x = rng.normal(size=(n, h, wd, c_in)).astype(np.float32)
    x[0, :, : wd // 2] = 0.5  # flat regions: tied maxima inside pooling windows
    w = rng.normal(size=(k, k, c_in, c_out)).astype(np.float32)
    out = np.asarray(jax.jit(conv_max_pool, static_argnums=2)(x, w, pool))
    assert out.shape == (n, (h - k + 1) // pool, (wd - k + 1) // pool, c_out)
    np.testing.assert_allclose(out, brute_force(x, w, pool), rtol=1e-5, atol=1e-5)
    g = rng.normal(size=out.shape).astype(np.float32)
    loss = lambda x, w: jnp.sum(conv_max_pool(x, w, pool) * g)
    dx, dw = jax.jit(jax.grad(loss, (0, 1)))(x, w)
    tdx, tdw, tout = torch_grads(x, w, pool, g)
    np.testing.assert_allclose(out, tout, rtol=1e-5, atol=1e-5)
    # ties go to the first maximum of each window, as torch routes them
    np.testing.assert_allclose(np.asarray(dw), tdw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dx), tdx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", ["relu(y + b)", "bias_relu"])
def test_relu_and_bias_commute_with_the_pool_including_gradients(block):
    """relu(conv_max_pool + b) is torch's conv + b → ReLU → max_pool2d, values and gradients;
    also through ``bias_relu`` (its own backward: the bias gradient as a matrix product)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 16, 13, 3)).astype(np.float32)
    x[1] = 1.0  # an all-ones image (the OAT BOS crop): every window is one tie
    w = rng.normal(size=(5, 5, 3, 6)).astype(np.float32)
    b = rng.normal(size=(6,)).astype(np.float32)
    act = bias_relu if block == "bias_relu" else lambda y, b: jax.nn.relu(y + b)
    assert float(jnp.mean(act(conv_max_pool(x, w, 3), b) == 0)) > 0.1  # the ReLU cuts some
    r = rng.normal(size=(2, 4, 3, 6)).astype(np.float32)  # a cotangent also where the ReLU cuts
    ours = jax.value_and_grad(lambda w, b: jnp.sum(act(conv_max_pool(x, w, 3), b) * r), (0, 1))
    (val, (dw, db)) = ours(w, b)
    xt = torch.tensor(np.transpose(x, (0, 3, 1, 2)))
    wt = torch.tensor(np.transpose(w, (3, 2, 0, 1)), requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    y = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(xt, wt, bt)), 3)
    tval = (y * torch.tensor(np.transpose(r, (0, 3, 1, 2)))).sum()
    tval.backward()
    np.testing.assert_allclose(float(val), float(tval.detach()), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), np.transpose(wt.grad.numpy(), (2, 3, 1, 0)),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(db), bt.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_bad_shapes_are_named():
    x = jnp.zeros((1, 6, 6, 3))
    with pytest.raises(ValueError, match="square HWIO"):
        conv_max_pool(x, jnp.zeros((3, 3, 2, 4)), 2)
    with pytest.raises(ValueError, match="too small"):
        conv_max_pool(x, jnp.zeros((5, 5, 3, 4)), 3)
