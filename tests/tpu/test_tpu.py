"""tpu/: presets, the launcher (dry run), the worker wrapper, and the AOT check where libtpu is."""

import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from common.sharding import parse_mesh
from tpu.presets import PRESETS, get_preset

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_meshes_fit_their_slice(name):
    p = PRESETS[name]
    ici, dcn = parse_mesh(p.mesh).shapes(p.chips)
    assert dcn == (1, 1, 1, 1)
    assert p.chips % p.hosts == 0


def test_unknown_preset_is_named():
    with pytest.raises(KeyError, match="unknown TPU preset 'v9-1'"):
        get_preset("v9-1")


def test_launcher_dry_run_targets_every_worker():
    out = subprocess.run(
        ["bash", "tpu/launch.sh", "--dry-run", "--sync", "--setup", "my-tpu", "us-central2-b",
         "--", "python", "-m", "common.train", "lm", "--mesh", "data=2,tensor=4"],
        cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, HEADLAB_RUN_ID="r1"),
        timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    ssh = [ln for ln in lines if " ssh my-tpu " in ln]
    assert ssh and all("--worker=all" in ln for ln in ssh)
    run = ssh[-1]
    assert "HEADLAB_DISTRIBUTED=1" in run and "tpu/worker.sh" in run and "common.train" in run
    assert any(" scp " in ln and "logs/r1" in ln for ln in lines)
    assert not (ROOT / "logs" / "r1").exists()


def test_launcher_usage_error():
    out = subprocess.run(["bash", "tpu/launch.sh", "my-tpu"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "usage" in out.stderr


def test_worker_wrapper_records_env_log_and_status(tmp_path):
    env = dict(os.environ, HEADLAB_RUN_ID="r2", HEADLAB_LOG_DIR=str(tmp_path),
               HEADLAB_PROCESS_ID="3")
    env.pop("TPU_WORKER_ID", None)
    env.pop("SLURM_PROCID", None)
    out = subprocess.run(["bash", str(ROOT / "tpu/worker.sh"), sys.executable, "-c",
                          "print('hello'); raise SystemExit(5)"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 5
    d = tmp_path / "r2"
    assert (d / "worker-3.log").read_text().strip() == "hello"
    assert (d / "worker-3.status").read_text().strip() == "5"
    info = (d / "worker-3.env").read_text()
    assert "jax=" in info and "HEADLAB_PROCESS_ID=3" in info


def _libtpu_path():
    if importlib.util.find_spec("libtpu") is not None:
        return ""
    path = os.environ.get("HEADLAB_LIBTPU_PATH")
    if path and (pathlib.Path(path) / "libtpu").is_dir():
        return path
    return None


# Needs libtpu (not a TPU): compiles for the topology on this CPU machine.
@pytest.mark.parametrize("preset,slices", [("v5e-16", 1), ("v6e-256", 1), ("v5e-16", 2)])
def test_aot_compile_for_a_tpu_topology(preset, slices):
    path = _libtpu_path()
    if path is None:
        pytest.skip("libtpu not importable; set HEADLAB_LIBTPU_PATH to a folder holding it")
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (path, str(ROOT)) if p))
    out = subprocess.run([sys.executable, "-m", "tpu.aot", "lm", "--preset", preset,
                          "--slices", str(slices)],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    import json

    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["platform"] == "tpu" and res["devices"] == PRESETS[preset].chips * slices
    if slices > 1:  # the hybrid ICI x DCN mesh: slices are data-parallel replicas
        assert res["mesh"]["data"] == slices
    assert res["temp_size_in_bytes"] > 0


def test_worker_wrapper_passes_sigterm_on_and_waits_for_the_command(tmp_path):
    # the command stands in for the training loop: on SIGTERM it "saves" and exits 0
    child = ("import signal, sys, time\n"
             "def stop(*_):\n"
             "    time.sleep(0.5); print('saved step 7', flush=True); sys.exit(0)\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             "print('training', flush=True)\n"
             "time.sleep(60)\n")
    env = dict(os.environ, HEADLAB_RUN_ID="r3", HEADLAB_LOG_DIR=str(tmp_path),
               HEADLAB_PROCESS_ID="0")
    proc = subprocess.Popen(["bash", str(ROOT / "tpu/worker.sh"), sys.executable, "-c", child],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = tmp_path / "r3" / "worker-0.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "training" in log.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # only the wrapper is signalled, as a test of forwarding
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM, passed to the command" in err
    assert log.read_text().split() == ["training", "saved", "step", "7"]
    assert (tmp_path / "r3" / "worker-0.status").read_text().strip() == "0"


def readme_launches() -> list[list[str]]:
    """The ``tpu/launch.sh`` commands of tpu/README.md's bash blocks, as argument lists."""
    import shlex

    text = (ROOT / "tpu" / "README.md").read_text()
    commands = []
    for block in text.split("```bash")[1:]:
        body = block.split("```")[0].replace("\\\n", " ")
        for line in body.splitlines():
            line = line.strip()
            if line.startswith("tpu/launch.sh"):
                commands.append(shlex.split(line.replace("~", "$HOME")))
    return commands


def test_readme_recipe_commands_are_ones_the_scripts_run():
    from common.train.__main__ import build_parser

    launches = readme_launches()
    assert len(launches) >= 4
    for argv in launches:
        out = subprocess.run(["bash", str(ROOT / argv[0]), "--dry-run", *argv[1:]],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, (argv, out.stderr)
        assert "--worker=all" in out.stdout
        inner = argv[argv.index("--") + 1:]
        if inner[:3] == ["python", "-m", "common.train"]:
            args = build_parser().parse_args(inner[3:])  # the flags exist and parse
            assert args.target == "lm"
        elif inner[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(inner[2]) is not None, inner
