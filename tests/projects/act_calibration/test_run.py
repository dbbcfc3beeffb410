"""The whole run on a tiny random model (word-level toy tokenizer) with the shipped data:
summary.json in the issue's schema, heads.json, figures without layout problems, the report;
and the quick run on SmolLM2 (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from projects.act_calibration import run
from projects.act_calibration.configs.default import get_config
from projects.act_calibration.evaluate import SETTINGS
from tests.projects.act_calibration.tiny import tiny


def _tiny_config():
    c = get_config("quick")
    c.datasets = ("sst2", "cb")
    c.n_demo_pool = 8
    c.n_calib = 3
    c.n_test = 5
    c.shots = 1
    c.seeds = (0, 1)
    c.search.layer_stride = 1
    c.sinks.prompts_per_dataset = 1
    c.max_words = 12
    return c


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    model, tok = tiny()
    s = run.run(_tiny_config(), tmp_path, loaded=(model, tok))
    disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(disk["accuracy"]) == {"sst2", "cb"}
    for row in disk["accuracy"].values():
        for k in SETTINGS:
            assert 0.0 <= row[k] <= 1.0 and row[f"{k}_std"] >= 0.0
            assert row[k] == pytest.approx(np.mean(row[f"{k}_per_seed"]), abs=1e-4)
    assert disk["n_test"] == {"sst2": 5, "cb": 5}
    assert all(2 <= h[0] <= 3 and 0 <= h[1] < 4 for h in disk["heads"])
    heads = json.loads((tmp_path / "heads.json").read_text())
    assert heads["heads"] == disk["heads"]
    assert set(disk["sinks"]) >= {"initial_sink_rate", "hidden_sink_rate", "hidden_kinds"}
    assert disk["search"]["n_searched"] == 8 and disk["search"]["n_examples"] == 6
    assert s["figure_layout_problems"] == {}
    pngs = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert pngs == ["accuracy.png", "attention_maps.png", "head_search.png",
                    "sink_frequency.png"]
    text = (tmp_path / "report.md").read_text()
    assert "## Accuracy (%)" in text and "+7.3 points" in text
    lines = run.headline(s)
    assert "paper: up to +7.3" in lines[0] and "reproduced at this scale" in lines[-1]


@pytest.mark.slow
@pytest.mark.smollm2
def test_quick_run_on_smollm2(tmp_path, smollm2):
    c = get_config("quick")
    c.datasets = ("sst2",)
    c.n_test = 16
    c.search.layer_stride = 13
    s = run.run(c, tmp_path, loaded=smollm2)
    assert s["sinks"]["initial_sink_rate"] > 0.5  # SmolLM2's first token is a sink
    assert 0.5 <= s["accuracy"]["sst2"]["vanilla"] <= 1.0  # above chance on SST-2
