"""8-device cases, run by test_multidevice.py in a subprocess with 8 fake CPU devices.

(Not collected by the default run: the file name does not start with ``test_``.)
"""

import functools
import os

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), (
    "run through tests/common/sharding/test_multidevice.py")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from common.data import InducedTokens, stack_examples  # noqa: E402
from common.models import DecoderLM, ModelConfig  # noqa: E402
from common.sharding import make_mesh, sharded_init  # noqa: E402
from common.sharding.rules import logical_to_spec  # noqa: E402
from common.train import Checkpointer, make_train_step  # noqa: E402
from projects.lm.train import loss_fn  # noqa: E402

CFG = ModelConfig(arch="llama", vocab_size=128, d_model=64, n_layers=1, n_heads=8, n_kv_heads=4,
                  d_mlp=128, attn_backend="reference")
# SGD with momentum: the update is linear in the gradient, so a 1e-6 check on the params tests
# the sharded gradient itself. (Adam's first steps divide by |g|, so an entry with g ~ 1e-9
# turns float rounding differences between reduction orders into O(lr) differences.)
TX = optax.sgd(0.5, momentum=0.9)


def make_model():
    return DecoderLM(CFG, rngs=nnx.Rngs(0))


def batch(n=8, seq=16):
    src = InducedTokens(n, seq, CFG.vocab_size, seed=3)
    return stack_examples([src[i] for i in range(n)])


@functools.cache
def run_steps_on(mesh_spec, grad_accum=1, n_steps=2):
    mesh = single() if mesh_spec is None else make_mesh(mesh_spec)
    return run_steps(mesh, n_steps, grad_accum)


def run_steps(mesh, n_steps, grad_accum=1):
    init = sharded_init(make_model, TX, mesh)
    bsh = {"input_ids": jax.sharding.NamedSharding(mesh, logical_to_spec(("batch", "seq"),
                                                                         mesh=mesh))}
    step = jax.jit(make_train_step(init.model_def, loss_fn, TX, grad_accum=grad_accum),
                   in_shardings=(init.shardings, bsh), out_shardings=(init.shardings, None, None))
    state = init.create()
    losses = []
    b = jax.device_put(batch(), bsh)
    for _ in range(n_steps):
        state, metrics, finite = step(state, b)
        assert bool(finite.all())
        losses.append(float(metrics["loss"]))
    return init, state, losses


def single():
    return make_mesh("data=1", devices=jax.devices()[:1])


def assert_trees_close(a, b, atol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def test_eight_devices():
    assert jax.device_count() == 8


def test_sharded_lm_step_matches_single_device():
    init8, s8, l8 = run_steps_on("data=2,tensor=4", 1)
    _, s1, l1 = run_steps_on(None, 1)
    # the loss (~4.8) to 1e-6 relative (8 float32 ulps), parameters to 1e-6 absolute
    np.testing.assert_allclose(l8, l1, rtol=1e-6, atol=0)
    assert_trees_close(s8.params, s1.params, 1e-6)
    assert_trees_close(s8.opt_state, s1.opt_state, 1e-6)
    assert l8[1] < l8[0]  # it trained


def test_grad_accumulation_matches_full_batch():
    _, s_acc, l_acc = run_steps_on(None, 2)
    _, s_full, l_full = run_steps_on(None, 1)
    np.testing.assert_allclose(l_acc, l_full, rtol=1e-6, atol=0)
    assert_trees_close(s_acc.params, s_full.params, 1e-6)


def test_heads_are_split_over_tensor():
    mesh = make_mesh("data=2,tensor=4")
    init, state, _ = run_steps_on("data=2,tensor=4", 1)
    attn = state.params["blocks"]["attn"]  # the block stack: [n_layers, ...]
    tensor = mesh.shape["tensor"]
    L = CFG.n_layers
    assert attn["q_kernel"].sharding.spec == P(None, "fsdp", "tensor")
    assert attn["o_kernel"].sharding.spec == P(None, "tensor", None, "fsdp")
    # each device holds heads / tensor query heads and kv_heads / tensor K/V heads, of every
    # layer (the layer axis is never split)
    for shard in attn["q_kernel"].addressable_shards:
        assert shard.data.shape == (L, 64, CFG.n_heads // tensor, CFG.d_head)
    for shard in attn["k_kernel"].addressable_shards:
        assert shard.data.shape == (L, 64, CFG.n_kv_heads // tensor, CFG.d_head)
    for shard in attn["o_kernel"].addressable_shards:
        assert shard.data.shape == (L, CFG.n_heads // tensor, CFG.d_head, 64)
    # devices that differ only in their tensor coordinate hold different heads
    q_idx = {d: s.index for d, s in zip(
        [s.device for s in attn["q_kernel"].addressable_shards],
        attn["q_kernel"].addressable_shards, strict=True)}
    heads_of = {d: idx[2] for d, idx in q_idx.items()}  # [layers, embed, heads, head_dim]
    row = mesh.devices[0, 0, :, 0]
    assert len({(heads_of[d].start, heads_of[d].stop) for d in row}) == tensor
    # the optimiser state follows its parameter; the step counter is replicated
    trace = state.opt_state[0]
    assert trace.trace["blocks"]["attn"]["q_kernel"].sharding.spec == P(None, "fsdp", "tensor")
    assert state.step.sharding.spec == P()


def test_restore_onto_another_mesh_and_device_count(tmp_path):
    init8, s8, _ = run_steps_on("data=2,tensor=4", 1)
    ck = Checkpointer(tmp_path / "ck", keep=2)
    ck.save(2, s8, {"iterator": {"next_index": 1}, "data_crc": 7})
    ck.close()
    for mesh in (make_mesh("data=2,fsdp=2,tensor=2"), single(),
                 make_mesh("data=2", devices=jax.devices()[:2])):
        target = sharded_init(make_model, TX, mesh)
        step, restored, data = Checkpointer(tmp_path / "ck").restore(target.abstract)
        assert step == 2 and data == {"iterator": {"next_index": 1}, "data_crc": 7}
        for x, y, t in zip(jax.tree.leaves(s8), jax.tree.leaves(restored),
                           jax.tree.leaves(target.shardings), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
            assert y.sharding == t


def test_activation_placement_splits_the_residual_and_the_logits():
    """Under a ZeRO-3 mesh the named activations follow the rules: the residual entering each
    layer is split over the batch axes only, the logits over batch and vocab, and the train step
    built with the placement gives the losses of the one without it."""
    from common.models.activation_sharding import activation_sharding
    from common.sharding import activation_placement

    mesh = make_mesh("fsdp=4,tensor=2")
    init = sharded_init(make_model, TX, mesh)
    seen = []
    place = activation_placement(mesh)

    def recording(names, shape):
        sharding = place(names, shape)
        seen.append((names, sharding.spec))
        return sharding

    ids = jax.device_put(batch()["input_ids"], jax.sharding.NamedSharding(
        mesh, logical_to_spec(("batch", "seq"), mesh=mesh)))
    state = init.create()

    @jax.jit
    def logits_of(params, ids):
        with activation_sharding(recording):
            return init.model_def.bind(params)(ids)

    logits = logits_of(state.params, ids)
    split = ("data", "fsdp")  # data has size 1 on this mesh
    assert (("batch", "seq", None), P(split)) in seen
    assert (("batch", "seq", "vocab"), P(split, None, "tensor")) in seen
    assert logits.sharding.is_equivalent_to(
        jax.sharding.NamedSharding(mesh, P("fsdp", None, "tensor")), 3)
    bsh = {"input_ids": ids.sharding}
    losses = {}
    for name, placement in (("placed", place), ("free", None)):
        step = jax.jit(make_train_step(init.model_def, loss_fn, TX, placement=placement),
                       in_shardings=(init.shardings, bsh),
                       out_shardings=(init.shardings, None, None))
        _, metrics, _ = step(init.create(), {"input_ids": ids})
        losses[name] = float(metrics["loss"])
    np.testing.assert_allclose(losses["placed"], losses["free"], rtol=1e-6)
