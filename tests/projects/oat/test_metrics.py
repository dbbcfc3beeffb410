"""Every metric on hand-made scanpaths with values worked out by hand (in the comments)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from projects.oat import metrics as M


def test_behaviour_counts_runs_by_hand():
    # runs (3×2) (5×1) (3×1) (7×3): search 3, 5, 7 → 3; revisit the second 3 → 1;
    # refixations 1 + 0 + 0 + 2 = 3; length 7; last is the target 7
    b = M.behaviour([3, 3, 5, 3, 7, 7, 7], target=7)
    assert b == pytest.approx({"found": 1.0, "length": 7.0, "search": 3 / 7, "refix": 3 / 7,
                               "revisit": 1 / 7})
    assert M.behaviour([1], target=2) == {"found": 0.0, "length": 1.0, "search": 1.0,
                                          "refix": 0.0, "revisit": 0.0}
    with pytest.raises(ValueError, match="empty"):
        M.behaviour([], 0)


def test_behaviour_ratios_sum_to_one():
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = rng.integers(0, 4, rng.integers(1, 12))
        b = M.behaviour(s, 0)
        assert b["search"] + b["refix"] + b["revisit"] == pytest.approx(1.0)


def test_behavioural_error_by_hand():
    m = [0.5, 4.0, 0.6, 0.3, 0.1]
    g = [1.0, 5.0, 0.8, 0.1, 0.1]
    # 0.5/1 + 1/5 + 0.2/0.8 + 0.2/0.1 + 0 = 0.5 + 0.2 + 0.25 + 2.0 = 2.95; / 5
    assert M.behavioural_error(m, g) == pytest.approx(0.59)
    assert M.behavioural_error(g, g) == 0.0
    # the official torch.nansum: 0/0 adds nothing, x/0 is infinite
    assert M.behavioural_error([1, 2, 0.5, 0.5, 0.0], [1, 2, 0.5, 0.25, 0.0]) == pytest.approx(0.2)
    assert math.isinf(M.behavioural_error([1, 2, 0.5, 0.5, 0.1], [1, 2, 0.5, 0.5, 0.0]))


def test_mean_behaviour_averages_paths():
    got = M.mean_behaviour([[1, 2], [2, 2, 1]], [2, 2])
    # [found, length, search, refix, revisit]: (1, 2, 1, 0, 0) and (0, 3, 2/3, 1/3, 0)
    np.testing.assert_allclose(got, [0.5, 2.5, 5 / 6, 1 / 6, 0.0])


def brute_lcs(a, b):
    best = 0
    for k in range(len(a) + 1):
        for sub in itertools.combinations(a, k):
            it = iter(b)
            if all(x in it for x in sub):
                best = max(best, k)
    return best


def test_sequence_score_by_hand_and_against_brute_force_lcs():
    assert M.sequence_score([1, 2, 3, 4], [1, 3, 4, 5, 6]) == pytest.approx(3 / 5)  # LCS 1 3 4
    assert M.sequence_score([7, 7], [7]) == pytest.approx(0.5)
    assert M.sequence_score([1, 2], [3, 4]) == 0.0
    rng = np.random.default_rng(1)
    for _ in range(30):
        a, b = rng.integers(0, 4, rng.integers(1, 7)), rng.integers(0, 4, rng.integers(1, 7))
        want = brute_lcs(list(a), list(b)) / max(len(a), len(b))
        assert M.sequence_score(a, b) == pytest.approx(want)


def test_edit_distance_by_hand():
    assert M.edit_distance([1, 2, 3], [1, 3, 3, 4]) == 2  # substitute 2→3, insert 4
    assert M.edit_distance([], [1, 2]) == 2
    assert M.edit_distance([5, 6, 7], [5, 6, 7]) == 0
    assert M.edit_distance([1, 2, 3, 4], [2, 3, 4, 1]) == 2  # delete the first 1, append 1


def test_multimatch_identical_paths_score_one():
    xy = np.array([[0, 0], [100, 0], [100, 100], [30, 40]], float)
    assert M.multimatch(xy, xy, (300, 400)) == pytest.approx(
        {"vector": 1.0, "direction": 1.0, "length": 1.0, "position": 1.0, "mean": 1.0})


def test_multimatch_by_hand():
    # saccades (100, 0) twice against (0, 100) twice; screen 300 × 400, diagonal 500.
    # Every pair differs by |(100, −100)| = 141.42; the cheapest alignment is the diagonal
    # (pairs (0, 0), (1, 1)). vector 1 − 141.42 / 1000; direction: π/2 apart → 1 − 1/2;
    # length 100 vs 100 → 1; position: starts (0, 0)/(0, 0) and (100, 0)/(0, 100): median of
    # 0 and 141.42 = 70.71 → 1 − 70.71 / 500.
    pred = np.array([[0, 0], [100, 0], [200, 0]], float)
    gt = np.array([[0, 0], [0, 100], [0, 200]], float)
    got = M.multimatch(pred, gt, (300, 400))
    r2 = 100 * math.sqrt(2)
    want = {"vector": 1 - r2 / 1000, "direction": 0.5, "length": 1.0,
            "position": 1 - (r2 / 2) / 500}
    want["mean"] = sum(want.values()) / 4
    assert got == pytest.approx(want)


def test_multimatch_unequal_lengths_alignment_by_hand():
    # pred saccades s1 = (100, 0) from (0, 0), s2 = (0, 100) from (100, 0); gt t1 = (100, 0)
    # from (0, 0), t2 = (0, 0) from (100, 0), t3 = (0, 100) from (100, 0).
    # M = [[0, 100, 141.4], [141.4, 100, 0]]; the cheapest paths (cost 100) are
    # (0,0)→(0,1)→(1,2) and (0,0)→(1,1)→(1,2). Along either, the vector, angle (θ(0, 0) = 0),
    # length and start-point differences are [0, x, 0] with one x > 0 at most: medians 0, so
    # every dimension is 1 although the paths differ.
    pred = np.array([[0, 0], [100, 0], [100, 100]], float)
    gt = np.array([[0, 0], [100, 0], [100, 0], [100, 100]], float)
    got = M.multimatch(pred, gt, (300, 400))
    assert got == pytest.approx({"vector": 1.0, "direction": 1.0, "length": 1.0,
                                 "position": 1.0, "mean": 1.0})
    # a third pred saccade back to the start: s3 = (−100, −100) from (100, 100) pairs with t3
    # (the only column left): vector |(−100, −200)| = 223.6, so the medians move
    pred3 = np.array([[0, 0], [100, 0], [100, 100], [0, 0]], float)
    got3 = M.multimatch(pred3, gt, (300, 400))
    assert got3["vector"] < 1.0


def test_multimatch_pads_short_paths_with_ones():
    short = np.array([[50.0, 60.0]])
    padded = np.array([[50.0, 60.0], [1.0, 1.0], [1.0, 1.0]])
    other = np.array([[10, 10], [200, 100], [30, 300]], float)
    assert M.multimatch(short, other, (300, 400)) == M.multimatch(padded, other, (300, 400))


def test_nss_by_hand():
    # 4 × 2 screen, predicted pixels (0, 0), (3, 1): map mean 1/4, std √(3/16) = 0.4330;
    # ones score 0.75 / 0.433 = 1.7321, zeros −0.25 / 0.433 = −0.5774; human (0, 0), (1, 0)
    got = M.nss(np.array([[0, 0], [3, 1]]), np.array([[0, 0], [1, 0]]), (4, 2))
    assert got == pytest.approx((math.sqrt(3) - 1 / math.sqrt(3)) / 2)
    assert M.nss(np.array([[0.4, 0.2]]), np.array([[0, 0]]), (4, 2)) == pytest.approx(
        0.875 / math.sqrt(7 / 64))  # 0.4 rounds to pixel 0; one of 8 pixels set


def test_sim_by_hand():
    p = np.array([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]])
    assert M.sim_teacher_forced(p, np.array([0, 2])) == pytest.approx(0.6)
