"""SIGTERM (a preemption notice): save the agreed step, exit 0, resume bit-identically.

One process (its own SIGTERM handler) and two ``jax.distributed`` processes (JAX's preemption
sync point: SIGTERM reaches only one of them, both save the same step).
"""

import json
import pathlib
import signal
import subprocess
import time

import numpy as np
import pytest

from common.train.cli import restore_run
from tests.common.train._runs import ROOT, assert_trees_equal, command, env, free_port, run

STEPS = 600
ARGS = ["--set", f"train.steps={STEPS}", "--set", "train.checkpoint_every=250"]


def logged_step(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def start(workdir, extra, env_) -> subprocess.Popen:
    return subprocess.Popen(command(workdir, *ARGS, *extra), cwd=ROOT, env=env_,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sigterm_at(proc: subprocess.Popen, workdir, at_step: int, others=()) -> None:
    """Send SIGTERM to ``proc`` once ``workdir``'s metrics reach ``at_step``."""
    deadline = time.monotonic() + 300
    while logged_step(workdir) < at_step:
        for p in (proc, *others):
            if p.poll() is not None:
                out, err = p.communicate()
                raise AssertionError(f"exited early ({p.returncode}): {out[-1500:]}{err[-3000:]}")
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)


def finish(proc: subprocess.Popen) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    lines = out.strip().splitlines()
    return json.loads(lines[-1]), out


def random_step() -> int:
    return int(np.random.default_rng().integers(20, 150))


def test_sigterm_saves_the_step_exits_0_and_the_rerun_ends_bit_identical(tmp_path):
    cut, whole = tmp_path / "cut", tmp_path / "whole"
    at = random_step()
    proc = start(cut, [], env(1))
    sigterm_at(proc, cut, at)
    summary, out = finish(proc)
    k = summary["preempted_at"]
    assert k is not None and at <= k < STEPS, (at, summary)
    assert f"preempted (SIGTERM): saved step {k} of {STEPS}" in out
    assert (cut / "checkpoints" / str(k)).is_dir()

    resumed = json.loads(run(command(cut, *ARGS), env(1)).stdout.strip().splitlines()[-1])
    assert resumed["resumed_from"] == k and resumed["preempted_at"] is None
    run(command(whole, *ARGS), env(1))
    step_c, state_c, data_c, _ = restore_run(cut)
    step_w, state_w, data_w, _ = restore_run(whole)
    assert step_c == step_w == STEPS
    assert data_c == data_w  # same batches: iterator position and running CRC of every batch
    assert_trees_equal(state_c, state_w)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_agree_on_the_preemption_step(tmp_path):
    mesh = ["--mesh", "data=2,tensor=2"]
    cut, whole = tmp_path / "cut", tmp_path / "whole"

    def pair():
        port = free_port()
        return [start(cut, mesh, env(2, HEADLAB_COORDINATOR=f"127.0.0.1:{port}",
                                     HEADLAB_NUM_PROCESSES=2, HEADLAB_PROCESS_ID=i))
                for i in range(2)]

    procs = pair()
    try:
        at = random_step()
        sigterm_at(procs[1], cut, at, others=procs[:1])  # only process 1 is told
        (s0, out0), (s1, _) = [finish(p) for p in procs]
    finally:
        for p in procs:
            p.kill()
    k = s0["preempted_at"]
    assert k is not None and s1["preempted_at"] == k and at <= k < STEPS, (at, s0, s1)
    assert f"saved step {k}" in out0
    procs = pair()  # the same command again: resumes at k
    try:
        resumed = [finish(p)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [r["resumed_from"] for r in resumed] == [k, k]
    run(command(whole, *ARGS, *mesh), env(4))  # uninterrupted, one process, the same 4 devices
    step_c, state_c, data_c, _ = restore_run(cut)
    step_w, state_w, data_w, _ = restore_run(whole)
    assert step_c == step_w == STEPS
    # the same batches (data_crc is per process: it covers this process's half of each batch)
    assert data_c["iterator"] == data_w["iterator"]
    assert_trees_equal(state_c, state_w)
