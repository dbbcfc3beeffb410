"""The loop on a small attention regression: metrics, eval hook, NaN guard, mixed precision."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from common.attention import MultiHeadAttention
from common.data import generated_batches
from common.sharding import make_mesh, sharded_init
from common.train import NonFiniteError, Task, TrainConfig, make_train_step, train
from common.train.orbax_checkpoint import Checkpointer

D, H, S, B = 8, 2, 6, 16


def make_model():
    return MultiHeadAttention(D, H, H, D // H, rngs=nnx.Rngs(0), backend="reference")


def loss_fn(model, batch):
    x = batch["x"]
    pos = jnp.broadcast_to(jnp.arange(S), x.shape[:2])
    out, _ = model(x, positions=pos, mask=None)
    target = jnp.broadcast_to(x.mean(1, keepdims=True), x.shape)  # attend uniformly
    err = jnp.mean((out - target) ** 2)
    # poison: a batch with poison=inf makes q_kernel's gradient (and the loss) non-finite
    err = err + batch["poison"][0] * jnp.sum(model.q_kernel[...])
    return err, {"target_var": jnp.var(target)}


TASK = Task(make_model, loss_fn, {"x": ("batch", "seq", "embed"), "poison": ("batch",)})


def make_batch(step, poison_at=None):
    rng = np.random.default_rng((7, step))
    poison = np.inf if step == poison_at else 0.0
    return {"x": rng.standard_normal((B, S, D)).astype(np.float32),
            "poison": np.full((B,), poison, np.float32)}


def test_metrics_eval_and_checkpoints(tmp_path):
    cfg = TrainConfig(steps=30, log_every=10, checkpoint_every=15, eval_every=15,
                      progress=False)
    calls = []

    def eval_fn(model, step):
        calls.append(step)
        return {"q_norm": jnp.linalg.norm(model.q_kernel[...])}

    result = train(TASK, optax.adam(3e-2), generated_batches(make_batch), cfg, make_mesh(),
                   tmp_path, eval_fn=eval_fn)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [10, 20, 30]
    assert {"loss", "grad_norm", "target_var", "data_crc", "steps_per_sec"} <= set(train_rows[0])
    assert train_rows[-1]["loss"] < 0.5 * train_rows[0]["loss"]
    assert calls == [15, 30]
    assert [r["step"] for r in rows if "eval/q_norm" in r] == [15, 30]
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [15, 30]
    assert result.summary["final_loss"] == train_rows[-1]["loss"]
    assert int(result.state.step) == 30


def test_non_finite_step_stops_naming_step_and_leaf(tmp_path):
    cfg = TrainConfig(steps=10, log_every=1, checkpoint_every=2, progress=False)
    data = generated_batches(lambda s: make_batch(s, poison_at=4))  # batch 4 feeds update 5
    with pytest.raises(NonFiniteError, match="step 5") as err:
        train(TASK, optax.sgd(0.1), data, cfg, make_mesh(), tmp_path)
    assert err.value.step == 5
    assert "q_kernel" in err.value.leaves and "loss" in err.value.leaves
    assert "k_kernel" not in err.value.leaves
    # only finite states were saved: the last checkpoint is from before the bad step
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [2, 4]


def test_non_finite_update_is_not_applied():
    tx = optax.sgd(0.1)
    init = sharded_init(make_model, tx, make_mesh())
    step = jax.jit(make_train_step(init.model_def, loss_fn, tx))
    state = init.create()
    before = jax.device_get(state)
    after, _, finite = step(state, make_batch(0, poison_at=0))
    assert not bool(finite.all())
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(after), before)


def test_mixed_precision_keeps_float32_master_params():
    tx = optax.sgd(0.1)
    init = sharded_init(make_model, tx, make_mesh())
    batch = make_batch(0)
    f32 = jax.jit(make_train_step(init.model_def, loss_fn, tx))
    bf16 = jax.jit(make_train_step(init.model_def, loss_fn, tx, compute_dtype=jnp.bfloat16))
    s32, m32, _ = f32(init.create(), batch)
    s16, m16, _ = bf16(init.create(), batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16.params))
    # bfloat16 has an 8-bit mantissa: the loss agrees to ~1e-2 relative, not to float32 eps
    np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=2e-2)
    assert float(m16["loss"]) != float(m32["loss"])
    d32 = jax.tree.map(lambda a, b: a - b, s32.params, init.create().params)
    d16 = jax.tree.map(lambda a, b: a - b, s16.params, init.create().params)
    cos = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(d32), jax.tree.leaves(d16),
                                                     strict=True))
    n32 = sum(float(jnp.vdot(a, a)) for a in jax.tree.leaves(d32)) ** 0.5
    n16 = sum(float(jnp.vdot(a, a)) for a in jax.tree.leaves(d16)) ** 0.5
    assert cos / (n32 * n16) > 0.99  # the bfloat16 update points the same way
