"""Mod-10 SAEs trained as a population on the shared loop recover planted residue directions;
numeric tokens through a tokenizer; vector arithmetic on a tiny model by hand."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from common.interp import sae
from projects.successor_heads import mod10
from tests.projects.successor_heads.tiny import ToyTokenizer


def _planted(n_per=12, d=24, seed=0):
    """x = 3·r_{v mod 10} + 2·u_{domain} + noise: ten residue directions r_c, three domains."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, 13)))
    r, u = q[:, :10].T, q[:, 10:].T
    vals = np.arange(10 * n_per)
    dom = rng.integers(0, 3, len(vals))
    x = 3 * r[vals % 10] + 2 * u[dom] + 0.05 * rng.standard_normal((len(vals), d))
    return x.astype(np.float32), vals % 10, r


def test_sae_recovers_planted_mod10_directions(tmp_path):
    """A dictionary barely larger than the 13 true directions (12 features) keeps the residue
    directions whole; one much larger than the 30 (residue, domain) clusters would learn the
    clusters instead (feature splitting), as an SAE should."""
    x, res, r = _planted()
    runs = mod10.train_saes(x, x, dict_size=12, l1=(0.3,), seeds=(0, 1), steps=1500, lr=3e-3,
                          workdir=tmp_path, log_every=500, progress=False)
    assert len(runs) == 2 and runs.fvu.shape == (2,)
    for m in range(2):
        p = runs.run(m)
        assert runs.fvu[m] < 0.1
        feat, cov = sae.modal_features(np.asarray(sae.encode(p, jnp.asarray(x))), res, 10)
        assert (feat >= 0).all() and cov.min() >= 0.9
        dirs = np.asarray(sae.decoder(p))[feat]  # [10, d]
        cos = np.abs(np.sum(dirs * r, -1))
        assert cos.min() > 0.9, cos  # each residue's modal feature points along its r_c



def test_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="same d"):
        mod10.train_saes(np.zeros((4, 3)), np.zeros((4, 2)), dict_size=4, l1=(0.1,), seeds=(0,),
                       steps=10, workdir=tmp_path, log_every=10)
    with pytest.raises(ValueError, match="multiple of log_every"):
        mod10.train_saes(np.zeros((4, 3)), np.zeros((4, 3)), dict_size=4, l1=(0.1,), seeds=(0,),
                       steps=15, workdir=tmp_path, log_every=10)


def test_numeric_tokens_values_and_residues():
    tok = ToyTokenizer(words=["one", "two", "three", "first", "Second"])
    nt = mod10.numeric_tokens(tok, max_number=20)
    by = dict(zip(nt.text, nt.value, strict=True))
    assert by["7"] == 7 and by[" one"] == 1 and by[" first"] == 1 and by[" Second"] == 2
    assert " 7" not in by and "10" not in by  # two tokens in this tokenizer
    np.testing.assert_array_equal(nt.residue, nt.value % 10)
    assert len(set(nt.ids.tolist())) == len(nt.ids)
    with pytest.raises(ValueError, match="fewer than ten"):
        mod10.numeric_tokens(ToyTokenizer(words=["one"]), max_number=0)
