"""Populations in the shared loop: M models trained at once equal each model trained alone.

Two groups of linear regressions of different widths (3 models of d = 4, 2 models of d = 2),
each model with its own seed, init and on-device data stream.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from common.sharding import make_mesh
from common.train import Group, NonFiniteError, Population, Task, TrainConfig, train
from common.train.orbax_checkpoint import Checkpointer
from tests.common.train._runs import env, run

B = 8
GROUPS = {"wide": (4, (0, 1, 2)), "narrow": (2, (10, 11))}  # name: (d, seeds)
POISON = ("narrow", 11, 4)  # (group, seed, step): that model's batch at that step is inf


def init(d, seed):
    k = jax.random.key(seed)
    return {"w": jax.random.normal(k, (d,)), "b": jnp.zeros(())}


def example(d, seed, step, poison=False):
    """One model's batch at ``step``: ``{"x": [B, d], "y": [B]}``."""
    kx, kw = jax.random.split(jax.random.fold_in(jax.random.key(1000 + seed), step))
    x = jax.random.normal(kx, (B, d))
    y = x @ jnp.linspace(-1.0, 1.0, d) + 0.1 * jax.random.normal(kw, (B,))
    if poison:
        bad = (step == POISON[2]) & (seed == POISON[1])
        x = jnp.where(bad, jnp.inf, x)
    return {"x": x, "y": y}


def mse(p, batch):
    return jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2)


def population(groups=GROUPS, poison=False):
    pop = Population(tuple(
        Group(name, tuple(f"{name}{s}" for s in seeds),
              init=lambda m, d=d, seeds=seeds: init(d, seeds[m]), loss=mse, data=name,
              labels=tuple({"seed": s} for s in seeds),
              probe=lambda p: {"w_norm": jnp.linalg.norm(p["w"])})
        for name, (d, seeds) in groups.items()))

    def device_data(step):
        return {name: jax.tree.map(lambda *a: jnp.stack(a),
                                   *[example(d, s, step, poison) for s in seeds])
                for name, (d, seeds) in groups.items()}

    return Task.for_population(pop, device_data)


def config(**kw):
    return TrainConfig(**{**dict(steps=6, log_every=3, checkpoint_every=3, progress=False), **kw})


def rows(workdir):
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def together(tmp_path_factory):
    d = tmp_path_factory.mktemp("together")
    return train(population(), optax.adam(0.05), None, config(steps_per_call=3), make_mesh(), d), d


def test_population_equals_each_model_trained_alone(together, tmp_path):
    """Each model against a plain (non-population) run of that model alone."""
    result, d = together
    got = rows(d)
    for name, (dim, seeds) in GROUPS.items():
        for m, seed in enumerate(seeds):
            task = Task(lambda dim=dim, seed=seed: nnx.Dict(
                            {k: nnx.Param(v) for k, v in init(dim, seed).items()}),
                        lambda model, batch: (mse(nnx.to_pure_dict(nnx.state(model)), batch), {}),
                        {"x": (None,), "y": (None,)},
                        device_data=lambda step, dim=dim, seed=seed: example(dim, seed, step))
            alone = train(task, optax.adam(0.05), None, config(), make_mesh(),
                          tmp_path / f"{name}{seed}")
            for k in ("w", "b"):
                np.testing.assert_allclose(np.asarray(result.state.params[name][k][m]),
                                           np.asarray(alone.state.params[k]), rtol=1e-5, atol=1e-6)
            want = [r for r in rows(tmp_path / f"{name}{seed}") if "loss" in r]
            mine = [r for r in got if r.get("model") == f"{name}{seed}"]
            assert [r["step"] for r in mine] == [r["step"] for r in want] == [3, 6]
            for a, b in zip(mine, want, strict=True):
                assert a["seed"] == seed
                np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
                np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
            np.testing.assert_allclose(mine[-1]["w_norm"],
                                       np.linalg.norm(alone.state.params["w"]), rtol=1e-5)
    assert result.summary["final_loss"] == [r["loss"] for r in got if r["step"] == 6]


def test_k_steps_per_call_equal_single_steps(together, tmp_path):
    result, d = together
    single = train(population(), optax.adam(0.05), None, config(), make_mesh(), tmp_path)
    for a, b in zip(jax.tree.leaves(result.state), jax.tree.leaves(single.state), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    for a, b in zip(rows(d), rows(tmp_path), strict=True):  # mean over the 3 steps of each call
        assert a["model"] == b["model"] and a["step"] == b["step"]
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    assert len(result.step_times) == 2 and len(single.step_times) == 6


def test_steps_per_call_must_divide_the_intervals(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint_every \(3\) must be a multiple"):
        train(population(), optax.adam(0.05), None, config(log_every=2, steps_per_call=2),
              make_mesh(), tmp_path)


def test_non_finite_model_is_named(tmp_path):
    """An inf batch for one model: the error names it; only finite states were saved."""
    with pytest.raises(NonFiniteError, match="model narrow11") as err:
        train(population(poison=True), optax.adam(0.05), None,
              config(steps=10, log_every=2, checkpoint_every=2, steps_per_call=2), make_mesh(),
              tmp_path)
    assert err.value.step == POISON[2] + 1
    assert err.value.models == ["narrow11"]
    assert {"narrow11/w", "narrow11/loss"} <= set(err.value.leaves)
    assert all(n.startswith("narrow11/") for n in err.value.leaves)
    assert Checkpointer(tmp_path / "checkpoints").all_steps() == [2, 4]


def test_checkpoints_of_another_run_are_refused(tmp_path):
    train(population(), optax.adam(0.05), None, config(steps=3), make_mesh(), tmp_path,
          meta={"lr": 0.05})
    with pytest.raises(ValueError, match="holds checkpoints of a different run"):
        train(population(), optax.adam(0.1), None, config(steps=3), make_mesh(), tmp_path,
              meta={"lr": 0.1})


SHARDED = """
import sys
import jax, numpy as np, optax
from common.sharding import make_mesh
from common.train import train
from tests.common.train.test_population import config, population

assert jax.device_count() == 2
r = train(population(), optax.adam(0.05), None, config(steps_per_call=3), make_mesh(), sys.argv[1])
p = r.state.params
assert p["narrow"]["w"].sharding.spec[0] == "data"  # 2 models: one per device
assert p["wide"]["w"].sharding.is_fully_replicated  # 3 models do not split over 2 devices
np.savez(sys.argv[2], *[np.asarray(x) for x in jax.tree.leaves(r.state)])
"""


def test_model_axis_sharded_over_two_devices_matches_one(together, tmp_path):
    result, _ = together
    run([sys.executable, "-c", SHARDED, str(tmp_path), str(tmp_path / "s.npz")], env(devices=2))
    got = np.load(tmp_path / "s.npz")
    want = jax.tree.leaves(result.state)
    assert len(got.files) == len(want)
    for i, w in enumerate(want):
        np.testing.assert_allclose(got[f"arr_{i}"], np.asarray(w), rtol=1e-6, atol=1e-7)
