"""PINE on the real SmolLM2: the judge's flip rate is exactly 0, the vanilla method on PINE's
path is the plain forward, and PINE's suffix logits do not depend on the segments' order."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]


def test_judge_flip_rate_zero(smollm2):
    from projects.pine import evals

    model, tok = smollm2
    res = evals.judge(model, tok, 6, ("vanilla", "pine"), progress=False)
    assert res["pine"]["flip_rate"] == 0.0
    assert res["pine"]["max_abs_logodds_change"] < 1e-3
    assert res["vanilla"]["max_abs_logodds_change"] > 1e-2  # the order matters without PINE


def test_vanilla_method_is_plain_forward_and_pine_invariant(smollm2):
    from projects.pine import pine_logits

    model, tok = smollm2
    pre = tok.encode("<|im_start|>user\nWhich fruit is named below?\n")
    segs = [tok.encode(" The fruit is a pear."), tok.encode(" Apples are red."),
            tok.encode(" Plums grow on trees.")]
    suf = tok.encode("<|im_end|>\n<|im_start|>assistant\nThe")
    plain = np.asarray(model(jnp.asarray([pre + sum(segs, []) + suf])))[0, -len(suf):]
    np.testing.assert_allclose(pine_logits(model, pre, segs, suf, "vanilla"), plain,
                               atol=2e-3, rtol=0)
    a = pine_logits(model, pre, segs, suf, "pine")
    b = pine_logits(model, pre, segs[::-1], suf, "pine")
    np.testing.assert_allclose(a, b, atol=2e-3, rtol=0)
    v = pine_logits(model, pre, segs[::-1], suf, "vanilla")
    assert np.abs(v - plain).max() > 0.1
