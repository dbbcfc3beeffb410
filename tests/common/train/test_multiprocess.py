"""Two local processes (jax.distributed, gloo, 2 CPU devices each) train like one process."""

import json
import subprocess

import numpy as np
import pytest

from common.train.cli import restore_run
from tests.common.train._runs import ROOT, assert_trees_equal, command, env, free_port, run

ARGS = ["--mesh", "data=2,tensor=2", "--set", "train.steps=4", "--set", "train.checkpoint_every=2"]


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.multiprocess
def test_two_processes_agree_with_one(tmp_path):
    port = free_port()
    multi, single = tmp_path / "multi", tmp_path / "single"
    procs = [subprocess.Popen(
        command(multi, *ARGS), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env(2, HEADLAB_COORDINATOR=f"127.0.0.1:{port}", HEADLAB_NUM_PROCESSES=2,
                           HEADLAB_PROCESS_ID=i)) for i in range(2)]
    try:
        one = run(command(single, *ARGS), env(4))  # the same 4-device mesh in one process
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-4000:]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [s["processes"] for s in summaries] == [2, 2]
    assert json.loads(one.stdout.strip().splitlines()[-1])["processes"] == 1
    # the same losses at every step, and the same final parameters and optimiser state
    np.testing.assert_allclose(losses(multi), losses(single), rtol=1e-6, atol=0)
    assert len(losses(multi)) == 4
    step_m, state_m, data_m, _ = restore_run(multi)
    step_s, state_s, data_s, _ = restore_run(single)
    assert step_m == step_s == 4
    assert data_m["iterator"] == data_s["iterator"]
    assert_trees_equal(state_m, state_s)
