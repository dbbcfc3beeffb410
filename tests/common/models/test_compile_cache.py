"""The persistent compilation cache (issue 12 item 5): off at import, on at the first model call
in ``jax/`` beside ``$HEADLAB_CACHE``, read back by a second process; ``HEADLAB_COMPILATION_CACHE=0``
opts out and a folder the user chose is kept. Each case is a fresh Python process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

_SCRIPT = """
import json, os, jax
import common, common.models, common.interp  # importing changes no JAX configuration
at_import = jax.config.jax_compilation_cache_dir
if os.environ.get("KEEP_JAX_DEFAULT") != "1":
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # tiny programs count too
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
import jax.numpy as jnp
from flax import nnx
from common.models import DecoderLM, ModelConfig
cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=48)
model = DecoderLM(cfg, rngs=nnx.Rngs(0))
before_call = jax.config.jax_compilation_cache_dir
hits.clear()
model(jnp.zeros((1, 5), jnp.int32))
print(json.dumps({"at_import": at_import, "before_call": before_call,
                  "after": jax.config.jax_compilation_cache_dir, "hits": len(hits),
                  "min_secs": jax.config.jax_persistent_cache_min_compile_time_secs}))
"""


def _run(tmp_path, **env) -> dict:
    base = {k: v for k, v in os.environ.items()
            if k not in ("HEADLAB_COMPILATION_CACHE", "HEADLAB_JAX_CACHE",
                         "JAX_COMPILATION_CACHE_DIR")}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=_ROOT, capture_output=True,
                         text=True, timeout=300,
                         env={**base, "HEADLAB_CACHE": str(tmp_path / "models"), **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_on_at_the_first_call_and_read_by_a_second_process(tmp_path):
    folder = tmp_path / "jax"
    first = _run(tmp_path)
    assert first["at_import"] is None and first["before_call"] is None
    assert first["after"] == str(folder) and first["hits"] == 0
    assert first["min_secs"] == 0.0  # a threshold set by the user is kept
    assert any(folder.iterdir())  # the forward's executable was written
    second = _run(tmp_path)
    assert second["after"] == str(folder) and second["hits"] >= 1  # and read back


@pytest.mark.slow  # default run: test_on_at_the_first_call_and_read_by_a_second_process
def test_opt_out_and_the_users_own_folder(tmp_path):
    off = _run(tmp_path, HEADLAB_COMPILATION_CACHE="0")
    assert off["after"] is None and not (tmp_path / "jax").exists()
    mine = tmp_path / "mine"
    own = _run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(mine), KEEP_JAX_DEFAULT="1")
    assert own["after"] == str(mine) and not (tmp_path / "jax").exists()
    assert own["min_secs"] == 1.0  # the user's cache: nothing of it changed
    ours = _run(tmp_path, KEEP_JAX_DEFAULT="1")
    assert ours["after"] == str(tmp_path / "jax") and ours["min_secs"] == 0.2  # JAX's 1 s, lowered


_NOT_WRITTEN = """
import json, os, jax, jax.numpy as jnp
from common.models.compile_cache import not_written
jax.config.update("jax_compilation_cache_dir", os.environ["CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
def entries():
    return sorted(os.listdir(os.environ["CACHE"])) if os.path.isdir(os.environ["CACHE"]) else []
with not_written():
    jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.ones(7)).block_until_ready()
inside = entries()
restored = jax.config.jax_persistent_cache_min_compile_time_secs
jax.jit(lambda x: jnp.cos(x) * 5.0)(jnp.ones(7)).block_until_ready()
print(json.dumps({"inside": inside, "after": entries(), "restored": restored}))
"""


def test_not_written_compiles_without_a_cache_entry(tmp_path):
    """A program compiled inside ``not_written()`` leaves no entry; the setting comes back and
    the next program is written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    out = subprocess.run([sys.executable, "-c", _NOT_WRITTEN], capture_output=True, text=True,
                         cwd=_ROOT, env={**env, "CACHE": str(tmp_path / "jc")}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["inside"] == [] and got["restored"] == 0.0
    assert any(name.startswith("jit_") for name in got["after"])
