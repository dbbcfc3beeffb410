"""Vmapped multi-model training: resume after an interruption equals an uninterrupted run."""

import json

import jax
import numpy as np
import pytest

from common.rundir import MetricsWriter
from projects.icl_regression import model, spec, train
from projects.icl_regression.configs.default import get_config


def tiny_config():
    c = get_config("quick")
    c.d, c.length, c.batch = 3, 6, 16
    c.heads = (1, 2)
    c.seeds = (0, 1)
    c.steps, c.log_every, c.ckpt_every = 30, 10, 10
    c.noniso.enabled = True
    c.noniso.covariance = "toeplitz:0.5"
    c.multitask.enabled = False
    c.linear.enabled = False
    c.activation.enabled = False
    return c


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    c = tiny_config()
    d = tmp_path_factory.mktemp("straight")
    state, step = train.train(spec.buckets(c), c, d, MetricsWriter(d / "m.jsonl"),
                              progress=False)
    return c, state, step, d


@pytest.mark.slow  # the default run keeps test_sigkill_then_rerun_is_bit_exact
def test_resume_after_interrupt_is_bit_exact(straight, tmp_path):
    c, state, step, _ = straight
    buckets = spec.buckets(c)
    _, s1 = train.train(buckets, c, tmp_path, None, progress=False, stop_at=20)
    assert s1 == 20
    resumed, s2 = train.train(buckets, c, tmp_path, None, progress=False)
    assert s2 == step == 30
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_models_are_independent(straight, tmp_path):
    """Model m of a vmapped bucket equals the same model trained alone."""
    c, state, _, _ = straight
    b = [b for b in spec.buckets(c) if b.name == "H2"][0]
    alone = spec.Bucket(b.name, b.kind, b.d, b.heads, b.attention, None, (1,), None)
    c2 = tiny_config()
    c2.seeds = (1,)
    st, _ = train.train([alone], c2, tmp_path, None, progress=False)
    got = jax.tree.map(lambda x: np.asarray(x[1]), state["params"]["H2"])
    want = jax.tree.map(lambda x: np.asarray(x[0]), st["params"]["H2"])
    for k in got:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_training_learns_and_logs(straight):
    c, state, _, d = straight
    rows = [json.loads(x) for x in (d / "m.jsonl").read_text().splitlines()]
    names = {r["model"] for r in rows}
    assert names == {"H1_s0", "H1_s1", "H2_s0", "H2_s1", "noniso_H2_s0", "noniso_H2_s1"}
    h2 = [r for r in rows if r["model"] == "H2_s0"]
    assert [r["step"] for r in h2] == [10, 20, 30]
    assert len(h2[0]["omega"]) == 2 and len(h2[0]["mu"]) == 2
    kq, ov = model.circuits(jax.tree.map(lambda x: x[0], state["params"]["H2"]))
    np.testing.assert_allclose(h2[-1]["omega"],
                               np.diagonal(np.asarray(kq)[:, :3, :3], axis1=1, axis2=2).mean(1),
                               rtol=1e-5)


def test_mismatched_checkpoint_is_refused(straight):
    c, _, _, d = straight
    c2 = tiny_config()
    c2.lr = 0.5
    with pytest.raises(ValueError, match="holds checkpoints of a different run"):
        train.train(spec.buckets(c2), c2, d, None, progress=False)


KILLED_RUN = """
import sys, time
from common.rundir import MetricsWriter
from projects.icl_regression import spec, train
from tests.projects.icl_regression.test_train import tiny_config


class SlowMetrics(MetricsWriter):  # slows each chunk down so the kill lands mid-run
    def write(self, *args, **kwargs):
        time.sleep(0.3)
        super().write(*args, **kwargs)


c = tiny_config()
train.train(spec.buckets(c), c, sys.argv[1], SlowMetrics(sys.argv[2]), progress=False)
"""


def test_sigkill_then_rerun_is_bit_exact(straight, tmp_path):
    """A run killed with SIGKILL after its first checkpoint resumes and ends bit-identical."""
    import os
    import pathlib
    import signal
    import subprocess
    import sys
    import time

    c, state, step, _ = straight
    ck = tmp_path / "checkpoints"
    root = pathlib.Path(__file__).resolve().parents[3]
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path),
                             str(tmp_path / "m.jsonl")],
                            cwd=root, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    saved = lambda: sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit()) if ck.exists() else []
    try:
        deadline = time.time() + 300
        while not saved():
            assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()[-3000:]}"
            assert time.time() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()
        proc.stderr.close()
    on_disk = saved()
    assert 0 < on_disk[-1] < step, f"the kill did not land mid-run: {on_disk}"
    resumed, s2 = train.train(spec.buckets(c), c, tmp_path, None, progress=False)
    assert s2 == step
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_damaged_checkpoint_is_set_aside(straight, tmp_path):
    """A truncated file in the newest step: that step is moved aside, the run redoes it."""
    import shutil

    from common.train.orbax_checkpoint import CorruptCheckpointWarning

    c, state, step, d = straight
    ck = tmp_path / "checkpoints"
    shutil.copytree(d / "checkpoints", ck)
    files = sorted((p for p in (ck / str(step)).rglob("*") if p.is_file() and p.stat().st_size > 64),
                   key=lambda p: p.stat().st_size)
    with open(files[-1], "r+b") as f:
        f.truncate(files[-1].stat().st_size // 2)
    with pytest.warns(CorruptCheckpointWarning, match=f"step {step}"):
        redone, s2 = train.train(spec.buckets(c), c, tmp_path, None, progress=False)
    assert s2 == step and (ck / f"{step}.corrupt").is_dir()
    for a, b in zip(jax.tree.leaves(redone), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


SHARDED_RUN = """
import sys
import jax, numpy as np
from projects.icl_regression import spec, train
from tests.projects.icl_regression.test_train import tiny_config

assert jax.device_count() == 2
c = tiny_config()
state, _ = train.train(spec.buckets(c), c, sys.argv[1], None, progress=False)
assert state["params"]["H2"]["w_q"].sharding.spec[0] == "data"  # the models axis, split
np.savez(sys.argv[2], *[np.asarray(x) for x in jax.tree.leaves(state)])
"""


def test_seeds_sharded_over_two_devices_match_one_device(straight, tmp_path):
    """Two fake CPU devices, one seed each: the same models as on one device."""
    import sys

    from tests.common.train._runs import env, run

    _, state, _, _ = straight
    run([sys.executable, "-c", SHARDED_RUN, str(tmp_path), str(tmp_path / "s.npz")],
        env(devices=2))
    got = np.load(tmp_path / "s.npz")
    want = jax.tree.leaves(state)
    assert len(got.files) == len(want)
    for i, w in enumerate(want):
        np.testing.assert_allclose(got[f"arr_{i}"], np.asarray(w), rtol=1e-5, atol=1e-6)
