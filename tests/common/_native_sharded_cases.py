"""8-device case, run by test_native.py in a subprocess with 8 fake CPU devices: the native
conv_max_pool on a batch sharded over a mesh gives the single-device values and gradients, and its
outputs stay sharded (the targets are registered batch-partitionable: no gather of the batch).
(Not collected by the default run: no ``test_`` prefix.)"""

import os

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), (
    "run through tests/common/test_native.py")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import common.conv_pool as cp  # noqa: E402
from tests.common.test_conv_pool import require_native  # noqa: E402


def test_batch_sharded_native_conv_max_pool():
    require_native()
    assert cp.NATIVE_MAX_CIN >= 16
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 14, 12, 16)).astype(np.float32)
    w = rng.normal(size=(3, 3, 16, 32)).astype(np.float32)
    g = rng.normal(size=(16, 4, 3, 32)).astype(np.float32)

    def loss(x, w):
        return jnp.sum(cp.conv_max_pool(x, w, 3) * g)

    fwd = jax.jit(lambda x, w: cp.conv_max_pool(x, w, 3))
    grads = jax.jit(jax.grad(loss, (0, 1)))
    out1, (dx1, dw1) = fwd(x, w), grads(x, w)
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    ws = jax.device_put(w, NamedSharding(mesh, P()))
    hlo = fwd.lower(xs, ws).compile().as_text()
    assert "headlab_conv_max_pool_fwd" in hlo and "all-gather" not in hlo
    out8, (dx8, dw8) = fwd(xs, ws), grads(xs, ws)
    assert out8.sharding.spec[0] == "data" and dx8.sharding.spec[0] == "data"
    np.testing.assert_allclose(out8, out1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx8, dx1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw8, dw1, rtol=1e-4, atol=1e-4)
