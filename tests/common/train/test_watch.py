"""What a researcher watches: TensorBoard events equal metrics.jsonl; a profiler window."""

import json
import struct

import jax.numpy as jnp
import optax
import pytest

from common.data import generated_batches
from common.sharding import make_mesh
from common.train import Task, TrainConfig, train
from common.train.watch import device_memory, parse_profile
from tests.common.train.test_loop import TASK, make_batch


def read_events(logdir) -> dict[str, list[tuple[int, float]]]:
    """Scalars of the TFRecord event files under ``logdir`` (length-prefixed records,
    parsed with the event protobuf; written by tensorboardX, read here independently)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        i = 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i:i + 8])
            event = event_pb2.Event.FromString(raw[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


def test_tensorboard_events_match_metrics_jsonl(tmp_path):
    schedule = optax.linear_schedule(0.0, 3e-2, 10)
    task = Task(TASK.make_model, TASK.loss_fn, TASK.batch_axes, lr_schedule=schedule,
                token_field="x")
    cfg = TrainConfig(steps=20, log_every=5, checkpoint_every=0, eval_every=10, progress=False)
    train(task, optax.adam(schedule), generated_batches(make_batch), cfg, make_mesh(), tmp_path,
          eval_fn=lambda model, step: {"q_norm": jnp.linalg.norm(model.q_kernel[...])})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = read_events(tmp_path / "tensorboard")
    for tag in ("loss", "grad_norm", "lr", "steps_per_sec", "tokens_per_sec", "eval/q_norm"):
        want = [(r["step"], r[tag]) for r in rows if tag in r]
        assert len(want) == (2 if tag.startswith("eval/") else 4), tag
        got = events[tag]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag
    train_rows = [r for r in rows if "loss" in r]
    # the learning rate of the last update of each window, and the tokens of a [16, 6, 8] batch
    assert [r["lr"] for r in train_rows] == pytest.approx([float(schedule(s - 1))
                                                           for s in (5, 10, 15, 20)])
    for r in train_rows:
        assert r["tokens_per_sec"] == pytest.approx(16 * 6 * 8 * r["steps_per_sec"])


def test_profile_window_writes_a_trace(tmp_path):
    cfg = TrainConfig(steps=6, log_every=3, checkpoint_every=0, progress=False,
                      profile=(2, 2), tensorboard=False)
    train(TASK, optax.adam(1e-2), generated_batches(make_batch), cfg, make_mesh(), tmp_path)
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert not (tmp_path / "tensorboard").exists()


def test_parse_profile():
    assert parse_profile("10:5") == (10, 5) and parse_profile(None) is None
    for bad in ("10", "a:b", "-1:3", "3:0"):
        with pytest.raises(ValueError, match="--profile"):
            parse_profile(bad)


def test_cpu_reports_no_device_memory():
    assert device_memory() == {}  # the CPU backend keeps no allocator statistics
