"""Fault injection: SIGKILL at a random step, rerun the same command, end bit-identical."""

import json
import os
import random
import signal
import subprocess
import time

from common.train.cli import restore_run, train_main
from tests.common.train._runs import LM_ARGS, ROOT, assert_trees_equal, command, env

STEPS = 48
ARGS = ["--set", f"train.steps={STEPS}", "--set", "train.checkpoint_every=4",
        "--set", "train.keep_checkpoints=2", "--set", "data.source=tfds"]


def last_step(metrics):
    if not metrics.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines()
             if line.endswith("}")]
    return max(steps, default=0)


def saved_steps(work):
    """Complete checkpoints (orbax renames a step directory into place once written)."""
    d = work / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def test_sigkill_then_rerun_is_bit_identical(tmp_path):
    data_dir = tmp_path / "tfds"
    args = [*ARGS, "--set", f"data.dir={data_dir}"]
    # the uninterrupted reference, in this process
    ref = train_main("lm", None, tmp_path / "ref", [a for a in LM_ARGS + args if a != "--set"])
    kill_at = random.Random(time.time_ns()).randint(5, STEPS - 8)
    print(f"killing at step >= {kill_at}")
    work = tmp_path / "run"
    cmd = command(work, *args)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while last_step(work / "metrics.jsonl") < kill_at or not saved_steps(work):
            assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()[-3000:]}"
            assert time.time() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    killed_at = last_step(work / "metrics.jsonl")
    on_disk = saved_steps(work)
    assert killed_at < STEPS and on_disk[-1] < STEPS, "the run finished before it was killed"
    out = subprocess.run(cmd, cwd=ROOT, env=env(1), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-5000:]
    resumed = json.loads(out.stdout.strip().splitlines()[-1])
    # it resumed from the newest checkpoint on disk at the kill, not from scratch
    assert resumed["resumed_from"] == on_disk[-1] > 0
    assert "resumed" in (work / "metrics.jsonl").read_text()
    # same batches in the same order, same parameters and optimiser state, bit for bit
    assert resumed["data_crc"] == ref["data_crc"]
    assert resumed["final_loss"] == ref["final_loss"]
    s_ref, state_ref, data_ref, _ = restore_run(tmp_path / "ref")
    s_run, state_run, data_run, _ = restore_run(work)
    assert s_ref == s_run == STEPS
    assert data_ref == data_run
    assert_trees_equal(state_ref, state_run)
