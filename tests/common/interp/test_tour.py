"""tools/examples/transformerlens_tour.py runs, and each of its five tasks gives the right answer
(issue 12: "what it must show"). Uses the session's SmolLM2 and transformers models."""

from __future__ import annotations

import numpy as np
import pytest

from common.interp import Labelled, PatchingComparison, PatchingResult
from tools.examples import transformerlens_tour as tour

pytestmark = pytest.mark.smollm2


@pytest.mark.slow  # default run: each task's own tests (test_smollm2.py, test_lens.py, test_sweeps.py)
def test_the_tour_runs_and_agrees_with_transformers(smollm2, hf_smollm2, capsys):
    model, tokenizer = smollm2
    out = tour.main(model, tokenizer, hf_smollm2)
    text = capsys.readouterr().out
    assert "30 layers, 9 heads (3 kv heads)" in text and "tour done" in text
    # 0. tokens: no BOS (SmolLM2's own tokenizer adds none), single-token names
    assert out["clean"].shape == out["corrupted"].shape == (1, 14)
    assert out["str_tokens"][0] == "When" and out["str_tokens"][-1] == " to"
    # 1. a pattern is a distribution over earlier positions; hook names reach the same value
    p = np.asarray(out["pattern"])
    assert p.shape == (1, 9, 14, 14)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    assert np.abs(np.triu(p[0], 1)).max() == 0.0
    np.testing.assert_array_equal(p, np.asarray(out["pattern_by_hook_name"]))
    np.testing.assert_array_equal(np.asarray(out["z_last"]), np.asarray(out["cache"]["z", 29]))
    # 2 and 5. the ablation and z agree with transformers' hooks on the same weights
    assert out["z_err"] < 1e-4 and out["logits_err"] < 1e-3
    assert out["ablation_err"] < 1e-4
    assert out["diff"] - out["diff_ablated"] > 1e-3  # the head matters
    # 3. the OV circuit of one head, by label: [d_model_in, d_model_out]
    assert isinstance(out["ov"], Labelled) and out["ov"].axes == ("d_model_in", "d_model_out")
    np.testing.assert_allclose(np.asarray(out["ov"]),
                               np.asarray(model.W_V[23, 3] @ model.W_O[23, 3]), atol=1e-5)
    assert len(out["ov_top"]) == 5
    # 4. both patchings normalised: clean = 1, corrupted = 0, compared per head
    exact, est = out["exact"], out["estimate"]
    assert isinstance(exact, PatchingResult) and exact.normalized and est.normalized
    assert exact.shape == est.shape == (30, 9)
    assert float(exact.clean) > 0 > float(exact.corrupted)
    assert isinstance(out["comparison"], PatchingComparison)
    assert exact.top(1)[0][0] == (tour.LAYER, tour.HEAD)
    assert out["comparison"].spearman > 0.5
