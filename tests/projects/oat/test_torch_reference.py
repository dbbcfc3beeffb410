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
