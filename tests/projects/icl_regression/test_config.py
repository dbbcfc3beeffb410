"""Impossible or unknown configs fail at once with the field named."""

import ml_collections
import pytest

from projects.icl_regression import spec
from projects.icl_regression.configs.default import get_config


def test_configs_are_valid():
    for arg in (None, "quick"):
        c = get_config(arg)
        spec.validate(c)
        names = [b.name for b in spec.buckets(c)]
        assert names[:4] == ["H1", "H2", "H4", "H8"]
        assert "noniso_H2" in names and "lin_H1" in names
        assert {"act_affine_H2", "act_quadratic_H2", "act_tanh_H2"} <= set(names)
    with pytest.raises(ValueError, match="unknown argument"):
        get_config("huge")


@pytest.mark.parametrize("field,value,match", [
    ("length", 0, "config.length must be an integer >= 1"),
    ("d", -1, "config.d must be an integer >= 1"),
    ("heads", (2, 0), r"config.heads: every H must be an integer >= 1"),
    ("heads", (), "config.heads must name at least one"),
    ("steps", 0, "config.steps"),
    ("sigma2", -0.1, "config.sigma2 must be >= 0"),
    ("lr", 0.0, "config.lr must be > 0"),
    ("backend", "cuda", "config.backend must be one of"),
    ("ckpt_every", 300, "multiple of config.log_every"),
    ("seeds", (1, 1), "config.seeds must be non-empty and distinct"),
])
def test_bad_fields(field, value, match):
    c = get_config("quick")
    c[field] = value
    with pytest.raises(ValueError, match=match):
        spec.validate(c)


@pytest.mark.parametrize("field,value,match", [
    ("functions", ("tanh", "relu"), "config.activation.functions must be distinct names"),
    ("functions", (), "config.activation.functions must be distinct names"),
    ("c", 0.0, "config.activation.c must be > 0"),
    ("heads", 0, "config.activation.heads: every H must be an integer >= 1"),
])
def test_bad_activation_fields(field, value, match):
    c = get_config("quick")
    c.activation[field] = value
    with pytest.raises(ValueError, match=match):
        spec.validate(c)


def test_non_psd_covariance():
    c = get_config("quick")
    c.covariance = [[1.0, 2.0, 0, 0, 0], [2.0, 1.0, 0, 0, 0], [0, 0, 1.0, 0, 0],
                    [0, 0, 0, 1.0, 0], [0, 0, 0, 0, 1.0]]
    with pytest.raises(ValueError, match="config.covariance is not positive semi-definite"):
        spec.validate(c)
    c.covariance = [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match=r"config.covariance must be \[5, 5\]"):
        spec.validate(c)
    c = get_config("quick")
    c.noniso.covariance = "toeplitz:1.5"  # |ρ| > 1 is not PSD
    with pytest.raises(ValueError, match="config.noniso.covariance is not positive semi-definite"):
        spec.validate(c)
    c.noniso.covariance = "wishart"
    with pytest.raises(ValueError, match="config.noniso.covariance must be 'identity'"):
        spec.validate(c)


def test_covariance_as_text_from_the_command_line():
    c = get_config("quick")
    c.d = 2
    c.noniso.covariance = "[[2.0, 0.5], [0.5, 1.0]]"
    spec.validate(c)
    c.noniso.covariance = "[[1.0, 3.0], [3.0, 1.0]]"
    with pytest.raises(ValueError, match="not positive semi-definite"):
        spec.validate(c)


def test_psd_but_singular_covariance_is_accepted():
    c = get_config("quick")
    c.covariance = [[1.0 if i == j else (1.0 if i < 2 and j < 2 else 0.0) for j in range(5)]
                    for i in range(5)]
    spec.validate(c)


def test_unknown_keys():
    c = get_config("quick")
    c.unlock()
    c.learning_rate = 1e-3
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\]"):
        spec.validate(c)
    c = get_config("quick")
    c.unlock()
    c.eval.n_tests = 3
    with pytest.raises(ValueError, match=r"config.eval: unknown key\(s\) \['n_tests'\]"):
        spec.validate(c)


def test_multitask_subsets_checked():
    c = get_config("quick")
    c.multitask.subsets = ((0, 1), (5, 6))
    with pytest.raises(ValueError, match="must be distinct indices in"):
        spec.validate(c)


def test_config_dict_is_ml_collections():
    assert isinstance(get_config(), ml_collections.ConfigDict)
