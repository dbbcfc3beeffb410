"""The whole run on a tiny model (toy tokenizer): summary keys, figures without layout
problems, a report with its claims table; config errors name the field; the quick run on
SmolLM2 (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.configs import ConfigError
from projects.successor_heads import report, run
from projects.successor_heads.configs.default import get_config, validate
from tests.projects.successor_heads.tiny import ToyTokenizer, build, random_tensors, tiny_config

KEYS = ("succession_scores", "top_heads", "per_class", "mod10", "arithmetic_success")


def _tiny_config():
    c = get_config("quick")
    c.classes = ("numbers", "number_words", "days", "month_prefixes")
    c.held_out = ()
    c.mod10.seeds = (0,)
    c.mod10.l1 = (1.0,)
    c.mod10.steps = 50
    c.compare_modes = False
    c.toy.enabled = False  # tests/projects/successor_heads/test_toy.py
    c.natural.n_texts = 10
    c.incontext.max_prompts = 4
    c.incontext.patch_classes = ("days",)
    return c


def test_tiny_run_end_to_end(tmp_path):
    tok = ToyTokenizer()
    cfg = tiny_config(len(tok))
    model = build(cfg, random_tensors(cfg, seed=0))
    s = run.run(_tiny_config(), tmp_path, loaded=(model, tok))
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for k in KEYS:
        assert k in on_disk, k
    assert np.asarray(on_disk["succession_scores"]).shape == (cfg.n_layers, cfg.n_heads)
    assert len(on_disk["top_heads"]) == cfg.n_layers * cfg.n_heads  # top_k 10 > 8 heads
    assert on_disk["top_heads"][0][2] == pytest.approx(np.max(on_disk["succession_scores"]))
    assert "numbers" in on_disk["classes"]["dropped_classes"]  # " 5" is two toy tokens
    assert s["figure_layout_problems"] == {}
    pngs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert "succession_heatmap.png" in pngs and "mod10_features.png" in pngs
    text = (tmp_path / "report.md").read_text()
    assert "| claim | paper | this run | verdict |" in text
    assert "no successor head" in text
    lines = run.headline(s)
    assert "best succession score" in lines[0]
    assert lines[-1].endswith("report.md says which")


def test_claims_verdicts_follow_the_numbers():
    base = {"top_heads": [[3, 1, 0.9], [2, 0, 0.1]], "copy_top_heads": [[1, 1, 0.95]],
            "chance": 0.08, "threshold": 0.4, "n_above_threshold": 1}
    cl = {c["claim"][:30]: c["holds"] for c in report.claims(base)}
    assert all(cl.values())
    base["top_heads"] = [[3, 1, 0.15], [2, 0, 0.14]]
    base["copy_top_heads"] = [[1, 1, 0.5]]
    assert not any(c["holds"] for c in report.claims(base))


def test_config_errors_name_the_field():
    validate(get_config(None))
    validate(get_config("quick"))
    with pytest.raises(ValueError, match="unknown argument"):
        get_config("huge")
    for field, value, match in [("embed_mode", "mlp1", "config.embed_mode"),
                                ("classes", ("weekdays",), "unknown class"),
                                ("threshold", 0.0, "config.threshold"),
                                ("embed_fallback", "x", "config.embed_fallback"),
                                ("mesh", "fsdp=x", "config.mesh: mesh spec 'fsdp=x'")]:
        c = get_config("quick")
        c[field] = value
        with pytest.raises(ConfigError, match=match):
            validate(c)


@pytest.mark.slow
@pytest.mark.smollm2
def test_quick_run_on_smollm2(smollm2, tmp_path):
    s = run.run(get_config("quick"), tmp_path, loaded=smollm2)
    for k in KEYS:
        assert k in s
    assert s["figure_layout_problems"] == {}
    assert s["top_heads"][0][2] < 0.4  # no successor head (spec §11)
    assert s["copy_top_heads"][0][:2] == [23, 0] and s["copy_top_heads"][0][2] > 0.9
    ic = s["in_context"]
    assert ic["top1"] >= 0.8 * ic["prompts"]
    assert ic["top_dla_heads"][0][:2] == [23, 3]
