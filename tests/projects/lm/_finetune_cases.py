"""``headlab train lm --config finetune`` on 8 fake CPU devices (``data=2,fsdp=2,tensor=2``).

Run by test_finetune.py in a subprocess (the device count is fixed when JAX starts). A tiny
random Llama saved as a Hugging Face folder (with its own BPE tokenizer) is the fast case; the
same path with SmolLM2-135M-Instruct is marked slow.
"""

import json
import os

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), (
    "run through tests/projects/lm/test_finetune.py")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from common.configs import apply_overrides  # noqa: E402
from common.models import load_pretrained  # noqa: E402
from common.sharding import make_mesh, sharded_init  # noqa: E402
from common.sharding.rules import DEFAULT_RULES  # noqa: E402
from common.train import make_train_step  # noqa: E402
from common.train.checksum import host_checksums  # noqa: E402
from common.train.cli import train_main  # noqa: E402
from common.train.loop import _pretrained_state  # noqa: E402
from projects.lm.train import build, get_config  # noqa: E402
from tests.common.weights import tiny  # noqa: E402

MESH = "data=2,fsdp=2,tensor=2"
# SGD: the update is linear in the gradient, so the parameters after one step compare the
# sharded gradient itself (as the toy model's 8-device test does).
SGD = optax.sgd(0.05)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    tok = tiny.tiny_tokenizer(320)
    model = tiny.tiny_llama(tok.get_vocab_size(), seed=3, tie=True)
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    tiny.save_tokenizer_files(folder, tok)
    return folder


def overrides(model_path, *extra):
    return [f"model.pretrained={model_path}", "model.attn_backend=reference",
            "train.progress=false", "data.seq_len=32", *extra]


def losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def spec_of(x) -> tuple:
    """``x``'s PartitionSpec as a tuple with one entry per dimension."""
    spec = tuple(x.sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def finetune_learns_and_resumes(model_path, tmp_path, steps, lr):
    args = overrides(model_path, f"optim.learning_rate={lr}", "train.log_every=2",
                     "train.eval_every=0", f"train.checkpoint_every={steps}")
    first = train_main("lm", MESH, tmp_path, args + [f"train.steps={steps}"],
                       config_arg="finetune", say=lambda _: None)
    assert first["mesh"].startswith("data=2,fsdp=2,tensor=2") and first["resumed_from"] == 0
    curve = losses(tmp_path)
    assert len(curve) == steps // 2
    assert curve[-1] < curve[0] - 0.1, curve  # the loss falls
    assert first["tokens_per_sec"] > 0
    # the same command with more steps continues from the saved step
    second = train_main("lm", MESH, tmp_path, args + [f"train.steps={steps + 2}"],
                        config_arg="finetune", say=lambda _: None)
    assert second["resumed_from"] == steps and second["steps"] == steps + 2
    assert len(losses(tmp_path)) == steps // 2 + 1
    return curve


def sharded_step_equals_single_device(model_path, tmp_path, atol):
    config = get_config("finetune")
    apply_overrides(config, overrides(model_path, "data.global_batch_size=8"))
    task, _, dataset, _, _ = build(config, tmp_path)
    # the independent reference: the whole checkpoint loaded on one device, to host arrays
    whole, _ = load_pretrained(model_path, attn_backend="reference")
    loaded = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(whole, nnx.Param)))
    del whole
    results = []
    for mesh in (make_mesh(MESH), make_mesh("data=1", devices=jax.devices()[:1])):
        init = sharded_init(task.make_model, SGD, mesh)
        # 8 devices: each reads its own slices of the file (load_pretrained(mesh=...)); one
        # device: the host arrays are placed (the other path of _pretrained_state)
        start = task.init_params(mesh, DEFAULT_RULES) if mesh.size == 8 else loaded
        state = _pretrained_state(init, SGD, start)
        # the pretrained start is the whole checkpoint, bit for bit, on the rules' shardings
        for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(loaded), strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        # so its checksums (computed where the shards live) are those of the host arrays
        assert host_checksums(state.params) == host_checksums(loaded)
        if mesh.size == 8:
            # embed on fsdp, the layer stack whole, heads on tensor where tensor divides them
            # (SmolLM2's 9 heads stay whole on tensor=2 and its MLP is split instead): the rules
            q, up = state.params["blocks"]["attn"]["q_kernel"], state.params["blocks"]["mlp"][
                "up_kernel"]
            heads = "tensor" if q.shape[2] % 2 == 0 else None
            assert spec_of(q) == (None, "fsdp", heads, None)
            assert spec_of(up) == (None, "fsdp", "tensor")
        step = jax.jit(make_train_step(init.model_def, task.loss_fn, SGD),
                       in_shardings=(init.shardings, None), out_shardings=(init.shardings,
                                                                           None, None))
        state, metrics, finite = step(state, dataset[0])
        assert bool(finite.all())
        results.append((float(metrics["loss"]), state))
    (l8, s8), (l1, s1) = results
    np.testing.assert_allclose(l8, l1, rtol=1e-6, atol=0)
    for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)
    return l8, l1


def test_eight_devices():
    assert jax.device_count() == 8


def test_tiny_pretrained_finetune_learns_and_resumes(tiny_folder, tmp_path):
    finetune_learns_and_resumes(tiny_folder, tmp_path, steps=10, lr=3e-3)


def test_tiny_pretrained_sharded_step_equals_single_device(tiny_folder, tmp_path):
    sharded_step_equals_single_device(tiny_folder, tmp_path, atol=1e-6)


def test_bad_pretrained_shape_is_refused(tiny_folder, tmp_path):
    config = get_config("finetune")
    apply_overrides(config, overrides(tiny_folder))
    task, _, _, _, _ = build(config, tmp_path)
    init = sharded_init(task.make_model, SGD, make_mesh(MESH))
    params = jax.tree.map(np.asarray, task.init_params(make_mesh(MESH), DEFAULT_RULES))
    params["embed"]["embedding"] = params["embed"]["embedding"][:10]
    with pytest.raises(ValueError, match=r"embed/embedding has shape \(10, 64\)"):
        _pretrained_state(init, SGD, params)


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_finetune_on_eight_devices(smollm2_path, tmp_path):
    curve = finetune_learns_and_resumes(smollm2_path, tmp_path / "run", steps=8, lr=1e-4)
    print("smollm2 finetune loss every 2 steps:", [round(x, 4) for x in curve])
    l8, l1 = sharded_step_equals_single_device(smollm2_path, tmp_path / "step", atol=1e-6)
    print(f"smollm2 one SGD step: loss sharded {l8:.6f} single {l1:.6f}")


