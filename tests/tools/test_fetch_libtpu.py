"""tools/fetch_libtpu.py: the pin comes from jax's metadata; an existing install is reused."""

from __future__ import annotations

import importlib.metadata

from tools import fetch_libtpu as fl


def test_pin_is_the_one_jax_tpu_extra_names():
    req = fl.pinned_requirement()
    assert req.startswith("libtpu==")
    assert any(r.replace(" ", "").startswith(req) and "tpu" in r
               for r in importlib.metadata.requires("jax"))


def test_version_matching():
    assert fl.matches("0.0.42.1", "libtpu==0.0.42.*")
    assert fl.matches("0.0.42", "libtpu==0.0.42.*")  # PEP 440 pads with zeros
    assert not fl.matches("0.0.420", "libtpu==0.0.42.*")
    assert fl.matches("0.0.43", "libtpu==0.0.43") and not fl.matches("0.0.43.1", "libtpu==0.0.43")


def test_an_install_of_the_pinned_version_is_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(fl, "pinned_requirement", lambda: "libtpu==0.0.42.*")
    (tmp_path / "libtpu").mkdir()
    (tmp_path / "libtpu-0.0.42.1.dist-info").mkdir()
    assert fl.installed_version(tmp_path) == "0.0.42.1"
    calls = []
    monkeypatch.setattr(fl.subprocess, "run", lambda *a, **k: calls.append(a))
    assert fl.fetch_libtpu(tmp_path) == tmp_path and calls == []
