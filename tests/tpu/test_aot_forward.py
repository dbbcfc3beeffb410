"""tpu/aot_forward.py: the sharded capture forward compiled for a TPU topology (where libtpu
is), the compiler's per-device memory against our estimate, and the refusal of a model that
does not fit (before any device or compiler is touched)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.tpu.test_tpu import _libtpu_path

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_a_model_that_does_not_fit_is_refused_before_compiling():
    """Llama-2-70B in bf16 is 128.5 GiB: on a v4-8 (4 chips of 32 GiB) its parameters alone
    are 32.1 GiB per chip. Refused from our estimate, without libtpu."""
    from tpu.aot_forward import DoesNotFit, aot_forward

    with pytest.raises(DoesNotFit, match=r"llama2-70b on v4-8 .* 3[23]\.\d+ GiB per device"):
        aot_forward("llama2-70b", "v4-8", batch=4, seq=256)


def test_cli_refusal_is_one_line(tmp_path):
    cfg = tmp_path / "config.json"
    from common.models.memory import NAMED_CONFIGS

    cfg.write_text(json.dumps(NAMED_CONFIGS["llama2-70b"]))
    out = subprocess.run([sys.executable, "-m", "tpu.aot_forward", str(cfg), "--preset", "v4-8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "over the 32.0 GiB of HBM" in out.stderr


def _run(model, preset, *args):
    path = _libtpu_path()
    if path is None:
        pytest.skip("libtpu not importable; set HEADLAB_LIBTPU_PATH to a folder holding it")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (path, str(ROOT)) if p))
    out = subprocess.run([sys.executable, "-m", "tpu.aot_forward", model, "--preset", preset,
                          *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("model,preset,args", [
    ("llama3-8b", "v5e-16", ["--batch", "8", "--seq", "2048", "--sites", "z"]),
    ("llama2-70b", "v5p-64", ["--batch", "8", "--seq", "4096", "--sites", "z,resid_post"]),
])
def test_aot_forward_with_captures_on_a_tpu_topology(model, preset, args):
    res = _run(model, preset, *args)
    est, comp = res["estimate_gib"], res["compiler_gib"]
    assert res["fits"] and res["devices"] == {"v5e-16": 16, "v5p-64": 32}[preset]
    # The compiler's arguments are the parameters (and the ids), its outputs the captures
    # and the logits: our estimate of each, to the 0.01 GiB rounding.
    assert abs(comp["arguments"] - est["params"]) <= 0.01
    assert abs(comp["outputs"] - (est["captures"] + est["logits"])) <= 0.01
    assert comp["temporaries"] > 0 and comp["total"] < res["hbm_gib"]


def test_estimate_only_needs_no_libtpu():
    out = subprocess.run([sys.executable, "-m", "tpu.aot_forward", "qwen2-7b", "--preset",
                          "v5e-16", "--estimate-only", "--batch", "4", "--seq", "1024"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["params"] == 7_615_616_512 and "compiler_gib" not in res
    assert res["mesh"] == {"data": 1, "fsdp": 4, "tensor": 4, "context": 1}
    # 7.6e9 bf16 parameters (14.2 GiB), nearly all split 16 ways: 0.89 GiB per chip
    assert 0.88 <= res["estimate_gib"]["params"] <= 0.90
    out = subprocess.run([sys.executable, "-m", "tpu.aot_forward", "qwen2-7b", "--preset",
                          "v9-1", "--estimate-only"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 2 and "unknown TPU preset 'v9-1'" in out.stderr


def test_the_compiler_refuses_what_our_estimate_lets_through():
    """Capturing the float32 attention pattern of every layer of Qwen2-7B (batch 16 x 2048):
    our estimate (what the forward keeps: 13.5 GiB per chip) fits a v5e's 16 GiB, but the
    compiled program needs 26.7 GiB of temporaries: refused by the compiler's answer, in one
    line."""
    path = _libtpu_path()
    if path is None:
        pytest.skip("libtpu not importable; set HEADLAB_LIBTPU_PATH to a folder holding it")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (path, str(ROOT)) if p))
    out = subprocess.run([sys.executable, "-m", "tpu.aot_forward", "qwen2-7b", "--preset",
                          "v5e-16", "--batch", "16", "--seq", "2048", "--sites", "z,pattern"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "the TPU compiler needs" in last and "over the" in last, out.stderr[-3000:]
