"""The whole run on a tiny random model with a byte tokenizer (slow), and the config checks."""

from __future__ import annotations

import json

import pytest

from common.configs import ConfigError
from projects.pine.configs.default import get_config, validate
from tests.projects.pine.tiny import ByteTokenizer, tiny_model


def test_config_errors():
    validate(get_config("quick"))
    for field, value, match in (("methods", ("vanilla", "pine", "shuffle"), "methods"),
                                ("retrieval.ks", (3, 11), "retrieval.ks"),
                                ("judge.n_items", 0, "judge")):
        c = get_config("quick")
        node, _, leaf = field.rpartition(".")
        setattr(c[node] if node else c, leaf, value)
        with pytest.raises(ConfigError, match=match):
            validate(c)
    with pytest.raises(ConfigError, match="quick"):
        get_config("fast")


@pytest.mark.slow
def test_run_on_a_tiny_model(tmp_path):
    from projects.pine.run import headline, run

    c = get_config("quick")
    c.judge.n_items = 4
    c.retrieval.ks = (3,)
    c.retrieval.n_items = 2
    c.timing.ks = (2,)
    c.timing.tokens = 60
    c.timing.rounds = 1
    summary = run(c, tmp_path, loaded=(tiny_model(vocab=128), ByteTokenizer()))
    assert summary["judge"]["pine"]["flip_rate"] == 0.0
    assert summary["judge"]["pine"]["max_abs_logodds_change"] < 1e-4
    assert summary["judge"]["vanilla"]["max_abs_logodds_change"] > 1e-3
    pine = summary["retrieval"]["k3"]["pine"]
    assert max(pine) == min(pine)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk["judge"]) == set(c.methods)
    assert set(on_disk["timing"]["k2"]) >= set(c.methods) | {"plain"}
    mem = on_disk["memory"]["k2"]
    assert set(mem) == set(c.methods) | {"plain"}
    detail = on_disk["memory_detail"]["k2"]["pine"]
    assert mem["pine"] == detail["temp"] + detail["argument"] + detail["output"]
    # the dense PINE path holds per-(query, key) logits the plain forward does not
    assert detail["temp"] > on_disk["memory_detail"]["k2"]["plain"]["temp"] > 0
    assert "Memory of each compiled forward program" in (tmp_path / "report.md").read_text()
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# PINE") and "flip rate" in report
    for name in ("retrieval_by_position", "timing"):
        assert (tmp_path / "figures" / f"{name}.png").exists()
    assert summary["figure_problems"] == []
    assert len(headline(summary)) >= 3
