"""The learned PE (hand-computed objective, learned table error), the synthetic guided-search
generator's documented rules, the baselines' maps and sampling, the data checks."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from projects.oat import baselines as B
from projects.oat import data as D
from projects.oat import pe
from projects.oat import synthetic as S

# ---------------------------------------------------------------------------------- PE


def test_gaussian_target_and_loss_by_hand():
    g = pe.gaussian_target(3, 2.0)
    assert g[0, 2] == pytest.approx(math.exp(-4 / 8)) and g[1, 1] == 1.0
    # orthogonal unit rows: every off-diagonal cosine is 0, norms equal:
    # loss = Σ_{i≠j} g_ij² / (R(R−1)) = 2·exp(−1/8)² / 2
    w = jnp.eye(2)
    assert float(pe.pe_loss(w, jnp.asarray(pe.gaussian_target(2, 2.0)))) == pytest.approx(
        math.exp(-1 / 8) ** 2, rel=1e-6)
    # unequal norms add their variance: norms 1 and 3 → var 1
    w2 = jnp.array([[1.0, 0.0], [0.0, 3.0]])
    assert float(pe.pe_loss(w2, jnp.asarray(pe.gaussian_target(2, 2.0)))) == pytest.approx(
        math.exp(-1 / 8) ** 2 + 1.0, rel=1e-6)


def test_learned_table_matches_the_gaussian():
    w = pe.learn_table(14, 86)  # the Amazon table's size
    err = pe.table_error(w)
    assert err["rms"] < 1e-3 and err["max_abs"] < 5e-3 and err["norm_spread"] < 1e-2
    assert pe.table_error(np.random.default_rng(0).normal(size=(14, 86)))["rms"] > 0.1
    assert pe.part_width(256) == 86 and pe.part_width(64) == 22


# ---------------------------------------------------------------------------------- synthetic

D4 = S.Display(rows=3, cols=4, crop_h=12, crop_w=8)


def test_trial_is_deterministic_and_well_formed():
    a, b = S.make_trial(0, 5, D4, S.SearchModel()), S.make_trial(0, 5, D4, S.SearchModel())
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(S.make_trial(0, 6, D4, S.SearchModel())["crops"], a["crops"])
    t = int(a["target"])
    feats = a["features"]
    assert (np.all(feats == feats[t], axis=1).sum()) == 1  # the target is unique
    assert a["crops"].shape == (12, 12, 8, 3) and 0 <= a["crops"].min() <= a["crops"].max() <= 1
    np.testing.assert_allclose(a["fix_xy"], D4.centres()[a["scanpath"]])
    D.check_trial(a, D4.n, "synthetic trial 5")


def test_similarity_by_hand():
    f = np.array([[0, 1], [0, 2], [3, 1], [3, 2]])
    np.testing.assert_array_equal(S.similarity(f, 0), [1.0, 0.5, 0.5, 0.0])


def test_guided_search_rules():
    rng = np.random.default_rng(0)
    trials = [S.make_trial(1, i, D4, S.SearchModel(p_refix=0.0, p_detect=1.0, p_verify=0.0,
                                                   w_ior=1e3)) for i in range(60)]
    for tr in trials:
        s, t = tr["scanpath"], int(tr["target"])
        assert not np.any(s[1:] == s[:-1])  # p_refix = 0: no consecutive repeats
        hits = np.flatnonzero(s == t)
        if len(hits):  # p_detect = 1, p_verify = 0: stops at the first target fixation
            assert hits[0] == len(s) - 1
        assert len(set(s.tolist())) == len(s)  # strong inhibition of return: no revisits
    capped = S.scanpath(np.zeros((12, 2), int), 0, D4, S.SearchModel(p_detect=0.0, max_len=5),
                        rng)
    assert len(capped) == 5  # never recognises the target: stops at max_len
    always = [S.scanpath(np.array([[0, 0]] + [[1, 1]] * 11), 0, D4,
                         S.SearchModel(p_detect=1.0, p_verify=1.0), rng) for _ in range(20)]
    for s in always:  # verification re-fixation, then stop
        assert s[-1] == 0 and s[-2] == 0 and (s[:-2] != 0).all()


# ---------------------------------------------------------------------------------- baselines


def test_centre_scale_by_hand():
    # fixations at (0, 0) and (2, 2) of a 3 × 3 grid, centre (1, 1): mean squared offset 1
    assert B.centre_scale([np.array([0]), np.array([8])], 3, 3) == pytest.approx(1.0)


def test_baseline_maps():
    crops = np.full((6, 4, 4, 3), 0.5, np.float32)
    crops[4] = [1.0, 0.0, 0.0]  # one red object among grey ones
    for name in B.NAMES:
        m = B.fixation_map(name, crops, 4, 2, 3, s2=1.0)
        assert m.shape == (6,) and m.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(B.fixation_map("random", crops, 4, 2, 3), 1 / 6)
    c = B.fixation_map("centre", crops, 4, 2, 3, s2=1.0)
    # centre (0.5, 1): squared distances 1.25 for the corners, 0.25 for the middle column
    assert c[1] / c[0] == pytest.approx(math.exp(1.0 / 2))
    assert np.argmax(B.fixation_map("saliency", crops, 4, 2, 3)) == 4
    ts = B.fixation_map("target_similarity", crops, 4, 2, 3)
    assert np.argmax(ts) == 4 and np.allclose(np.delete(ts, 4), ts[0])
    with pytest.raises(ValueError, match="unknown baseline"):
        B.fixation_map("nope", crops, 4, 2, 3)


def test_baseline_sampling_stops_at_target_or_length():
    rng = np.random.default_rng(0)
    m = np.array([0.0, 1.0, 0.0])
    paths = B.sample_scanpaths(m, 2, np.array([3]), 5, rng)
    assert all(p.tolist() == [1, 1, 1] for p in paths)  # never the target: the drawn length
    paths = B.sample_scanpaths(np.array([0.5, 0.0, 0.5]), 2, np.array([50]), 40, rng)
    assert all(p[-1] == 2 and (p[:-1] == 0).all() for p in paths)  # stops at the target


# ---------------------------------------------------------------------------------- data


def test_to_arrays_layout_by_hand():
    tr = {"crops": np.zeros((6, 4, 4, 3), np.uint8), "target": 2, "scanpath": np.array([1, 1, 2]),
          "fix_xy": np.zeros((3, 2)), "uid": 7}
    a = D.to_arrays([tr], 6, max_len=4)
    np.testing.assert_array_equal(a["dec_in"], [[8, 1, 1, 2, 7]])   # BOS = N + 2, PAD = N + 1
    np.testing.assert_array_equal(a["dec_out"], [[1, 1, 2, 6, 7]])  # EOS = N
    assert a["crops"].dtype == np.float32 and a["uid"].tolist() == [7]


def test_bad_trials_name_the_record():
    good = {"crops": np.zeros((6, 4, 4, 3)), "target": 2, "scanpath": np.array([1, 6, 2]),
            "fix_xy": np.zeros((3, 2))}
    with pytest.raises(D.DataError, match=r"trial 12: scanpath position 1 points at object 6, "
                                          r"which does not exist \(6 objects, 0..5\)"):
        D.check_trial(good, 6, "trial 12")
    with pytest.raises(D.DataError, match="trial 3: target index 9 is out of range"):
        D.check_trial({**good, "scanpath": np.array([1]), "fix_xy": np.zeros((1, 2)),
                       "target": 9}, 6, "trial 3")
    with pytest.raises(D.DataError, match="trial 4: missing field 'scanpath'"):
        D.check_trial({"crops": good["crops"], "target": 1}, 6, "trial 4")
    with pytest.raises(D.DataError, match=r"train trial 5: scanpath position 1 points"):
        D.to_arrays([{**good, "uid": 5}], 6, 4, name="train trial")


def test_split_is_80_10_10():
    s = D.split(100, seed=3)
    assert [len(s[k]) for k in ("train", "validation", "test")] == [80, 10, 10]
    assert sorted(np.concatenate(list(s.values())).tolist()) == list(range(100))
    with pytest.raises(D.DataError, match="not a permutation"):
        D.split(3, order=np.array([0, 0, 1]))
