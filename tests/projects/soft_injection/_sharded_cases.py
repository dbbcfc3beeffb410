"""8-device case, run by test_sharded.py in a subprocess with 8 fake CPU devices: the run on a
model sharded over a mesh (the selection trained on that mesh) gives the one-device numbers.
(Not collected by the default run: no ``test_`` prefix.)"""

import json
import os

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), (
    "run through tests/projects/soft_injection/test_sharded.py")

import numpy as np  # noqa: E402

from common.models.pretrained import shard_model  # noqa: E402
from projects.soft_injection import run  # noqa: E402
from tests.projects.soft_injection.fixtures import CharTokenizer, tiny_model, write_tasks  # noqa: E402
from tests.projects.soft_injection.test_run import _config  # noqa: E402

MESH = "data=2,fsdp=2,tensor=2"


def test_run_on_a_sharded_model_equals_one_device(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADLAB_DATA", str(tmp_path / "data"))
    names = write_tasks(tmp_path / "data")
    model = tiny_model()
    sharded = shard_model(model, MESH)
    q = sharded.blocks.attn.q_kernel[...]
    assert len(q.sharding.device_set) == 8 and q.sharding.spec[1] == "fsdp"
    # one device holds the model; the selection's population trains data-parallel (the default)
    one = run.run(_config(names), tmp_path / "one", loaded=(model, CharTokenizer()))
    c8 = _config(names)
    c8.mesh = MESH
    many = run.run(c8, tmp_path / "many", loaded=(sharded, CharTokenizer()))
    for t in names:
        for k, v in one["tasks"][t].items():
            assert many["tasks"][t][k] == v, (t, k)
    a1, a8 = np.load(tmp_path / "one" / "alphas.npz"), np.load(tmp_path / "many" / "alphas.npz")
    assert set(a1.files) == set(a8.files)
    for f in a1.files:
        np.testing.assert_allclose(a8[f], a1[f], atol=1e-4, rtol=1e-4, err_msg=f)
    assert json.loads((tmp_path / "many" / "summary.json").read_text())["mean"] == many["mean"]
