"""Labelled behaves like an array (issue 12, item 1): numpy/JAX interop, indexing by the one
rule of its docstring, arithmetic and matmul keeping the labels, one return type for every view."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.interp import OV, W_E, W_K, W_O, W_Q, W_U, W_V, Labelled, b_O, run_with_cache
from tests.common.interp.conftest import TINY

L, H, D = TINY.n_layers, TINY.n_heads, TINY.d_head


@pytest.fixture
def x():
    """``[layer, head, pos]`` holding layers 5 and 23 of a 24-layer model."""
    return Labelled(np.arange(24.0).reshape(2, 3, 4), ("layer", "head", "pos"),
                    {"layer": (5, 23)}, {"layer": 24})


def test_array_protocols(x):
    np.testing.assert_array_equal(np.asarray(x), x.values)
    np.testing.assert_array_equal(np.asarray(jnp.exp(x)), np.asarray(jnp.exp(x.values)))
    assert jnp.asarray(x).shape == (2, 3, 4)
    assert float(jnp.sum(x)) == float(x.values.sum())
    assert float(jax.jit(lambda a: jnp.sum(a))(x)) == float(x.values.sum())
    # numpy ufuncs keep the labels when the shape is kept
    e = np.exp(x)
    assert isinstance(e, Labelled) and e.axes == x.axes and e.coords == x.coords
    assert len(x) == 2 and [t.axes for t in x] == [("head", "pos")] * 2
    assert x.ndim == 3 and x.size == 24 and x.sizes == {"layer": 2, "head": 3, "pos": 4}
    # still a pytree with the values as its only leaf
    assert jax.tree.leaves(x) == [x.values]
    y = jax.tree.map(lambda v: v + 1, x)
    assert y.coords == x.coords and y.extents == x.extents


def test_indexing_by_coordinate_and_negative_layers(x):
    """Integers are coordinates; -1 counts back from the recorded extent (the model's layers)."""
    np.testing.assert_array_equal(np.asarray(x[23]), x.values[1])
    assert x[23].axes == ("head", "pos")
    assert float(x[23, 1, 2]) == x.values[1, 1, 2]
    assert x[23, 1, 2].axes == () and isinstance(x[23, 1, 2], Labelled)
    with pytest.raises(KeyError, match=r"no coordinate 0; it has \(5, 23\).*isel"):
        x[0]
    np.testing.assert_array_equal(np.asarray(x[-1]), x.values[1])  # layer 23 = 24 - 1
    with pytest.raises(KeyError, match="-2 is layer 22 .* not held"):
        x[-2]
    # axes without coordinates: plain numpy indexing, negative positions included
    np.testing.assert_array_equal(np.asarray(x[5, -1]), x.values[0, -1])
    np.testing.assert_array_equal(np.asarray(x[:, :, -2]), x.values[:, :, -2])
    # a list keeps the axis (and picks coordinates); slices and ... are positional
    assert x[[23, 5]].coords == {"layer": (23, 5)}
    np.testing.assert_array_equal(np.asarray(x[[23, 5]]), x.values[::-1])
    assert x[:1].coords == {"layer": (5,)}
    assert x[..., 0].axes == ("layer", "head")
    np.testing.assert_array_equal(np.asarray(x[..., 0]), x.values[..., 0])
    # a new axis has no name: a bare array
    assert np.shape(x[:, None]) == (2, 1, 3, 4)
    # sel / isel: always Labelled, even when every axis is selected
    s = x.sel(layer=23, head=1, pos=0)
    assert isinstance(s, Labelled) and s.axes == () and float(s) == x.values[1, 1, 0]
    assert f"{s:.1f}" == "16.0"
    assert x.sel(layer=-1).axes == ("head", "pos")
    np.testing.assert_array_equal(np.asarray(x.isel(layer=0)), x.values[0])


def test_indexing_under_jit():
    a = Labelled(jnp.arange(6.0).reshape(3, 2), ("head", "d"))
    got = jax.jit(lambda a, i: a[i])(a, jnp.asarray(2))
    assert isinstance(got, Labelled) and got.axes == ("d",)
    np.testing.assert_array_equal(np.asarray(got), [4.0, 5.0])


def test_arithmetic_keeps_labels_where_meaningful(x):
    y = Labelled(np.ones((3, 4)) * 2, ("head", "pos"))
    for out, want in ((x + 1, x.values + 1), (2 * x, 2 * x.values), (x - y, x.values - 2),
                      (x / y, x.values / 2), (-x, -x.values), (x ** 2, x.values ** 2),
                      (abs(-x), x.values)):
        assert isinstance(out, Labelled) and out.axes == x.axes and out.coords == x.coords
        np.testing.assert_array_equal(np.asarray(out), want)
    # aligned by name: [head, pos] + [layer, head, pos] has the left operand's axes first
    z = y + x
    assert z.axes == ("head", "pos", "layer")
    np.testing.assert_array_equal(np.asarray(z), np.transpose(x.values + 2, (1, 2, 0)))
    # a broadcasting array keeps the labels; one that changes the shape gives a bare array
    assert isinstance(x + np.ones(4), Labelled)
    assert not isinstance(x + np.ones((5, 2, 3, 4)), Labelled)
    assert isinstance(np.ones(4) + x, Labelled)  # numpy defers to us
    assert (x > 10).dtype == bool and (x > 10).axes == x.axes
    with pytest.raises(ValueError, match="axis 'layer' differs"):
        x + Labelled(np.ones(2), ("layer",))  # layers 0, 1 vs 5, 23
    assert x.sum("head").axes == ("layer", "pos")
    assert x.mean(("head", "pos")).coords == {"layer": (5, 23)}
    assert x.T.axes == ("pos", "head", "layer")


def test_matmul_names(tiny):
    """W_V @ W_O is the OV view, names and all; a vector @ matrix drops the contracted axis."""
    ov = tiny.W_V @ tiny.W_O
    assert ov.axes == OV(tiny).axes == ("layer", "head", "d_model_in", "d_model_out")
    np.testing.assert_allclose(np.asarray(ov), np.asarray(OV(tiny)), atol=1e-6, rtol=1e-6)
    e = tiny.W_E[3] @ tiny.W_U  # [d_model] @ [d_model, vocab]
    assert e.axes == ("vocab",) and e.shape == (TINY.vocab_size,)
    np.testing.assert_allclose(np.asarray(e), np.asarray(W_E(tiny).values[3] @ W_U(tiny).values),
                               atol=1e-5)
    qk = tiny.W_Q[1, 2] @ tiny.W_K[1, 2].T
    assert qk.axes == ("d_model_in", "d_model_out")


def test_one_return_type_and_negative_layers_in_every_view(tiny):
    for view in (W_Q, W_K, W_V, W_O, b_O, OV):
        full, last = view(tiny), view(tiny, layers=[-1])
        assert isinstance(full, Labelled) and full.labels("layer") == tuple(range(L))
        assert last.labels("layer") == (L - 1,)
        np.testing.assert_array_equal(np.asarray(last[-1]), np.asarray(full[L - 1]))
        np.testing.assert_array_equal(np.asarray(last[L - 1]), np.asarray(full[-1]))
    assert isinstance(W_E(tiny), Labelled) and W_E(tiny).axes == ("vocab", "d_model")
    assert isinstance(W_U(tiny), Labelled) and W_U(tiny).axes == ("d_model", "vocab")
    # layers=[1]: the label 1 is the obvious index, not position 0
    ov1 = OV(tiny, layers=[1])
    np.testing.assert_array_equal(np.asarray(ov1[1, 2]), np.asarray(OV(tiny).values[1, 2]))
    with pytest.raises(KeyError, match="no coordinate 0"):
        ov1[0]


def test_cache_negative_layers_and_stack_coordinates(tiny, ids):
    _, cache = run_with_cache(tiny, ids, names_filter="z", layers=[-1])
    assert cache.layers("z") == (L - 1,)
    np.testing.assert_array_equal(np.asarray(cache["z", -1]), np.asarray(cache["z", L - 1]))
    assert cache["z"].labels("layer") == (L - 1,)
    np.testing.assert_array_equal(np.asarray(cache["z"][-1]), np.asarray(cache["z", L - 1]))
    np.testing.assert_array_equal(np.asarray(cache["z"][L - 1]), np.asarray(cache["z", -1]))
    _, both = run_with_cache(tiny, ids, names_filter="z", layers=[0])
    with pytest.raises(KeyError, match=rf"captured at layers \(0,\), not at layer {L - 1} "
                                       r"\(-1 is layer"):
        both["z", -1]  # -1 is the model's last layer, not the last captured one
