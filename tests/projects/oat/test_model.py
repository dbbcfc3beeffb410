"""The model's contract (spec §2-§6): pointer index space, PE concatenation and truncation,
causal decoder, EOS masking at the first step, greedy / sampled decoding, parameter count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from projects.oat import pe
from projects.oat.model import OAT, OATConfig, count_params, decode, to_scanpaths

TINY = OATConfig(rows=2, cols=3, crop_h=10, crop_w=8, channels=(4, 4), kernels=(3, 3),
                 pools=(2, 1), d_app=8, d_pe=8, heads=2, d_ff=16, enc_layers=1, dec_layers=1,
                 pe_rows=4, dropout=0.1)


def random_table(cfg: OATConfig = TINY) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(cfg.pe_rows, pe.part_width(cfg.d_pe))).astype(
        np.float32)


_MODEL: list[OAT] = []


def tiny_model() -> OAT:
    """One tiny model shared by the tests (read-only)."""
    if not _MODEL:
        _MODEL.append(OAT(TINY, random_table(), 6, rngs=nnx.Rngs(0)))
    return _MODEL[0]


def inputs(b: int = 2, cfg: OATConfig = TINY):
    crops = jax.random.uniform(jax.random.key(1), (b, cfg.n, cfg.crop_h, cfg.crop_w, 3))
    target = jnp.array([4, 0][:b], jnp.int32)
    return crops, target


def test_paper_sizes_parameter_count():
    # CNN: conv 3·16·25 + 16, conv 16·32·9 + 32, fc 1440·256 + 256 = 374,752;
    # encoder layer: attention 4·(512² + 512), FFN 2·512² + 512 + 512, 2 LN → 1,577,984 × 4;
    # decoder layer: 2 attentions + FFN + 3 LN → 2,629,632 × 4 (no final LayerNorm: the
    # official TransformerEncoder/Decoder get none); pointer: 2 kernels 512·2·512, 2 biases
    # 2·512, combine 2 + 1 → 1,050,627.
    want = 374_752 + 4 * 1_577_984 + 4 * 2_629_632 + 1_050_627
    cfg = OATConfig()
    m = nnx.eval_shape(lambda: OAT(cfg, np.zeros((14, 86), np.float32), 20, rngs=nnx.Rngs(0)))
    assert count_params(m) == want == 18_255_843
    assert cfg.cnn_out_hw() == (9, 5) and cfg.d_model == 512
    assert (cfg.eos, cfg.pad, cfg.bos) == (84, 85, 86)


def test_object_pe_concatenates_and_truncates_to_256():
    table = np.arange(14 * 86, dtype=np.float32).reshape(14, 86)
    got = np.asarray(pe.object_pe(jnp.asarray(table), jnp.array(3), jnp.array(5), jnp.array(1),
                                  256))
    assert got.shape == (256,)
    np.testing.assert_array_equal(got[:86], table[3])
    np.testing.assert_array_equal(got[86:172], table[5])
    np.testing.assert_array_equal(got[172:], table[1, :84])  # the flag's last 2 dims dropped


def test_token_table_layout():
    m = tiny_model()
    crops, target = inputs()
    tab = np.asarray(nnx.jit(lambda m, c, t: m.token_table(c, t))(m, crops, target))
    assert tab.shape == (2, TINY.n + 3, TINY.d_model)
    app = np.asarray(m.cnn(crops))
    np.testing.assert_allclose(tab[:, :TINY.n, :8], app, rtol=1e-6)
    w = np.asarray(m.pe_table[...])
    # object 4 of trial 0 is at (1, 1) and is the target: decoder flag 1
    np.testing.assert_allclose(tab[0, 4, 8:], np.concatenate([w[1], w[1], w[1]])[:8])
    np.testing.assert_allclose(tab[1, 4, 8:], np.concatenate([w[1], w[1], w[0]])[:8])
    np.testing.assert_allclose(tab[0, TINY.eos, :8], app[0, 4], rtol=1e-6)  # target token
    np.testing.assert_array_equal(tab[:, TINY.pad], 0.0)
    # BOS: all-ones crop at the shelf centre (rows // 2, cols // 2) = (1, 1), flag 0
    np.testing.assert_allclose(tab[0, TINY.bos, 8:], np.concatenate([w[1], w[1], w[0]])[:8])


def test_logits_shape_pad_logit_and_causality():
    m = tiny_model()
    crops, target = inputs()
    dec_in = jnp.array([[TINY.bos, 1, 2, 4, TINY.pad, TINY.pad],
                        [TINY.bos, 3, 3, TINY.pad, TINY.pad, TINY.pad]], jnp.int32)
    fwd = nnx.jit(lambda m, c, t, d, s=None: m(c, t, d, seed=s))
    logits = np.asarray(fwd(m, crops, target, dec_in))
    assert logits.shape == (2, 6, TINY.n + 2)
    # the PAD logit is the constant 0 score through the head combination: its bias
    np.testing.assert_allclose(logits[..., TINY.pad], float(m.pointer.combine_bias[...]),
                               atol=1e-6)
    changed = np.asarray(fwd(m, crops, target, dec_in.at[:, 3].set(5)))
    np.testing.assert_allclose(changed[:, :3], logits[:, :3], atol=1e-5)
    assert not np.allclose(changed[0, 3], logits[0, 3])
    # dropout only with a seed, and a different mask per seed
    np.testing.assert_array_equal(np.asarray(fwd(m, crops, target, dec_in)), logits)
    d3 = np.asarray(fwd(m, crops, target, dec_in, jnp.uint32(3)))
    assert not np.allclose(d3, logits)
    np.testing.assert_array_equal(np.asarray(fwd(m, crops, target, dec_in, jnp.uint32(3))), d3)
    assert not np.allclose(np.asarray(fwd(m, crops, target, dec_in, jnp.uint32(4))), d3)


class AlwaysStop(OAT):
    """EOS has by far the largest logit at every step."""

    def decode_logits(self, table, memory, dec_in, seed=None):
        out = super().decode_logits(table, memory, dec_in, seed)
        return out.at[..., self.cfg.eos].set(1e4).at[..., self.cfg.pad].set(2e4)


def test_decode_masks_eos_at_the_first_step_and_pad_always():
    m = AlwaysStop(TINY, random_table(), 6, rngs=nnx.Rngs(0))
    crops, target = inputs()
    for key in (None, jax.random.key(0)):
        toks = np.asarray(nnx.jit(decode, static_argnums=3)(m, crops, target, 5, key))
        assert toks.shape == (2, 5)
        assert (toks[:, 0] < TINY.n).all()  # the first fixation is an object
        assert (toks[:, 1:] == TINY.eos).all()  # then stop (PAD never chosen)
        assert [len(p) for p in to_scanpaths(toks, TINY.eos)] == [1, 1]


def test_greedy_decode_is_the_argmax_of_teacher_forcing_on_its_own_output():
    m = tiny_model()
    crops, target = inputs()
    dec = nnx.jit(decode, static_argnums=3)
    toks = np.asarray(dec(m, crops, target, 5))
    dec_in = np.concatenate([np.full((2, 1), TINY.bos), toks], 1)
    logits = np.array(nnx.jit(lambda m, c, t, d: m(c, t, d))(m, crops, target,
                                                            jnp.asarray(dec_in)))[:, :5]
    logits[:, 0, TINY.eos] = -np.inf
    logits[..., TINY.pad] = -np.inf
    np.testing.assert_array_equal(np.argmax(logits, -1), toks)
    sampled = np.asarray(dec(m, crops, target, 5, jax.random.key(1)))
    assert sampled.shape == (2, 5) and (sampled <= TINY.n).all()


def test_to_scanpaths_cuts_at_first_eos():
    got = to_scanpaths(np.array([[3, 1, 6, 2, 6], [1, 2, 3, 4, 5]]), eos=6)
    assert [g.tolist() for g in got] == [[3, 1], [1, 2, 3, 4, 5]]


def test_bad_config_and_table_are_refused():
    with pytest.raises(ValueError, match="too small"):
        OATConfig(crop_h=8, crop_w=6).validate()
    with pytest.raises(ValueError, match="pe_table has shape"):
        OAT(TINY, np.zeros((3, 3), np.float32), 6, rngs=nnx.Rngs(0))
