"""Our OAT against an independent reference: the PyTorch re-implementation of the official model
(``tools/bench_oat.TorchOAT``: ``nn.TransformerEncoder``/``Decoder`` layers, the official
``Cross_Attention`` pointer) given our parameters computes the same logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")

from projects.oat.model import OAT, OATConfig  # noqa: E402
from tools.bench_oat import TorchOAT, batch, load_ours  # noqa: E402

CFG = OATConfig(rows=2, cols=3, crop_h=10, crop_w=8, channels=(4, 6), kernels=(3, 3),
                pools=(2, 1), d_app=12, d_pe=12, heads=3, d_ff=20, enc_layers=2, dec_layers=2,
                pe_rows=4)


def test_logits_match_the_pytorch_official_layout():
    table = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    ours = OAT(CFG, table, 6, rngs=nnx.Rngs(1))
    params = nnx.to_pure_dict(nnx.state(ours, nnx.Param))
    ref = TorchOAT(CFG, table, 6)
    load_ours(ref, params)
    ref.eval()
    b = batch(CFG, 5, b=4, seed=2)
    got = np.asarray(nnx.jit(lambda m, c, t, d: m(c, t, d))(
        ours, jnp.asarray(b["crops"]), jnp.asarray(b["target"]), jnp.asarray(b["dec_in"])))
    with torch.no_grad():
        want = ref(torch.as_tensor(b["crops"]), torch.as_tensor(b["target"]).long(),
                   torch.as_tensor(b["dec_in"]).long()).numpy()
    assert got.shape == want.shape == (4, 6, CFG.n + 2)
    valid = b["dec_in"] != CFG.pad
    np.testing.assert_allclose(got[valid], want[valid], atol=2e-5, rtol=1e-4)
    assert sum(p.numel() for p in ref.parameters()) == sum(
        int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))


def test_gradients_match_pytorch_autograd():
    """The teacher-forced cross-entropy's gradients (dropout off) equal PyTorch's autograd on the
    official layout, for the CNN (``common.conv_pool``'s backward; flat crops and the all-ones BOS
    crop tie inside pooling windows, where any routing gives the same kernel gradient; the
    routing itself is tested in tests/common/test_conv_pool.py), the transformer and the
    pointer."""
    from projects.oat.train import loss_and_metrics

    table = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    ours = OAT(CFG, table, 6, rngs=nnx.Rngs(1))
    ref = TorchOAT(CFG, table, 6)
    load_ours(ref, nnx.to_pure_dict(nnx.state(ours, nnx.Param)))
    ref.eval()
    b = batch(CFG, 5, b=4, seed=2)
    b["crops"][0, :2] = 0.25  # flat crops: tied maxima in every pooling window
    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)
    loss = lambda p: loss_and_metrics(nnx.merge(graphdef, p, rest), {
        k: jnp.asarray(v) for k, v in b.items()}, train=False)[0]
    val, grads = jax.jit(jax.value_and_grad(loss))(params)
    grads = nnx.to_pure_dict(grads)
    logits = ref(torch.as_tensor(b["crops"]), torch.as_tensor(b["target"]).long(),
                 torch.as_tensor(b["dec_in"]).long())
    tl = torch.nn.functional.cross_entropy(logits.reshape(-1, CFG.n + 2),
                                           torch.as_tensor(b["dec_out"]).long().reshape(-1),
                                           ignore_index=CFG.pad)
    tl.backward()
    np.testing.assert_allclose(float(val), float(tl.detach()), rtol=1e-5)
    cnn, enc, ptr = ref.cnn_embedding, ref.transformer_encoder.layers[0], ref.cross_attentions[1]
    pairs = [  # (ours, torch, torch→ours layout)
        (grads["cnn"]["conv1"]["kernel"], cnn.cnn1[0].weight.grad, (2, 3, 1, 0)),
        (grads["cnn"]["conv1"]["bias"], cnn.cnn1[0].bias.grad, None),
        (grads["cnn"]["conv2"]["kernel"], cnn.cnn2[0].weight.grad, (2, 3, 1, 0)),
        (grads["cnn"]["fc"]["kernel"], cnn.fc.weight.grad, (1, 0)),
        (grads["encoder"][0]["ffn"]["up"]["kernel"], enc.linear1.weight.grad, (1, 0)),
        (grads["pointer"]["enc_kernel"][:, 1], ptr.encode_fc.weight.grad, (1, 0)),
        (grads["pointer"]["combine"], ref.readout.weight.grad[0], None),
    ]
    for got, want, perm in pairs:
        want = want.numpy() if perm is None else np.transpose(want.numpy(), perm)
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4,
                                   atol=2e-4 * np.abs(want).max())


@pytest.mark.slow
def test_bench_profile_names_the_top_ops(tmp_path):
    """``python -m tools.bench_oat --profile DIR`` traces one step of ours and prints its ops."""
    import pathlib
    import re
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-m", "tools.bench_oat", "--size", "quick",
                          "--profile", str(tmp_path)], cwd=root, capture_output=True, text=True,
                         timeout=600, check=True).stdout.splitlines()
    assert out[0].startswith("OAT quick, batch 20: one traced step") and "top ops" in out[0]
    rows = [re.fullmatch(r"\s+(\d+) ms\s+(\d+)%\s+(\S.*)", line) for line in out[1:]]
    assert len(rows) == 15 and all(rows)
    shares = [int(r.group(2)) for r in rows]
    assert shares == sorted(shares, reverse=True) and 50 <= sum(shares) <= 101
    assert any(r.group(3) in ("dot", "ynn_fusion", "convolution") for r in rows)
