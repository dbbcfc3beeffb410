"""ACT as an Intervention on a tiny random model: the empty head list is the plain forward bit
for bit, layers outside the range are untouched, the calibrated layer's pattern is
``act_calibrate`` of the vanilla one on the chosen heads only, bad heads are errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from common.attention.act import act_calibrate
from common.interp import Intervention, run_with_cache
from common.interp.act import act_intervention, default_layers
from common.models import ModelConfig
from tests.common.interp.conftest import make_model

CFG = ModelConfig(vocab_size=50, d_model=32, n_layers=5, n_heads=4, n_kv_heads=2, d_head=8,
                  d_mlp=48, rope_theta=100.0)
IDS = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 12)), jnp.int32)


@pytest.fixture(scope="module")
def model():
    return make_model(CFG, seed=1)


def test_default_layers():
    assert default_layers(32) == tuple(range(2, 31))  # the released code's 2..30 of 32
    assert default_layers(5) == (2, 3)


def test_empty_head_list_is_the_plain_forward_bit_for_bit(model):
    plain = np.asarray(model(IDS))
    for heads in ([], [(0, 1), (1, 3), (4, 0)]):  # none, or none inside layers 2..3
        iv = act_intervention(model, heads)
        assert iv.is_empty()
        np.testing.assert_array_equal(np.asarray(model(IDS, intervention=iv)), plain)


def test_calibrated_layer_and_untouched_layers(model):
    heads = [(2, 0), (2, 3), (3, 1), (0, 2), (4, 1)]  # layers 0 and 4 are outside the range
    iv = act_intervention(model, heads)
    assert iv.edit_layers == (2, 3)
    _, van = run_with_cache(model, IDS, names_filter=["pattern", "resid_pre"])
    _, cal = run_with_cache(model, IDS, names_filter=["pattern", "resid_pre"], intervention=iv)
    for layer in (0, 1):
        np.testing.assert_array_equal(np.asarray(cal["pattern", layer]),
                                      np.asarray(van["pattern", layer]))
    np.testing.assert_array_equal(np.asarray(cal["resid_pre", 2]), np.asarray(van["resid_pre", 2]))
    want = np.asarray(act_calibrate(van["pattern", 2]))
    got = np.asarray(cal["pattern", 2])
    np.testing.assert_allclose(got[:, [0, 3]], want[:, [0, 3]], atol=1e-6)
    np.testing.assert_allclose(got[:, [1, 2]], np.asarray(van["pattern", 2])[:, [1, 2]],
                               atol=1e-6)
    assert np.abs(got[:, 0] - np.asarray(van["pattern", 2])[:, 0]).max() > 1e-3
    # layer 4 listed a head but is outside the range: its pattern is vanilla's given its input
    only_range = act_intervention(model, [h for h in heads if h[0] in (2, 3)])
    np.testing.assert_array_equal(np.asarray(model(IDS, intervention=iv)),
                                  np.asarray(model(IDS, intervention=only_range)))


def test_beta_one_changes_nothing(model):
    iv = act_intervention(model, [(2, 0), (3, 2)], beta=1.0)
    np.testing.assert_allclose(np.asarray(model(IDS, intervention=iv)), np.asarray(model(IDS)),
                               atol=1e-5)


def test_bad_heads_and_options(model):
    with pytest.raises(ValueError, match="head out of range"):
        act_intervention(model, [(2, 4)])
    with pytest.raises(ValueError, match="layer out of range"):
        act_intervention(model, [(7, 0)])
    with pytest.raises(ValueError, match="criterion"):
        act_intervention(model, [(2, 0)], criterion="median")
    with pytest.raises(ValueError, match="beta"):
        act_intervention(model, [(2, 0)], beta=1.5)
    assert isinstance(act_intervention(model, []), Intervention)


def test_whole_range_edits_every_layer_with_heads_as_data(model):
    heads = [(2, 1), (3, 3)]
    whole = act_intervention(model, heads, whole_range=True)
    assert whole.edit_layers == (2, 3)
    only = act_intervention(model, [(2, 1)], whole_range=True)
    assert only.edit_layers == (2, 3)  # layer 3 edited with no head chosen: its pattern kept
    np.testing.assert_allclose(np.asarray(model(IDS, intervention=only)),
                               np.asarray(model(IDS, intervention=act_intervention(
                                   model, [(2, 1)]))), atol=1e-5)
    empty = act_intervention(model, [], whole_range=True)
    np.testing.assert_allclose(np.asarray(model(IDS, intervention=empty)), np.asarray(model(IDS)),
                               atol=1e-5)
