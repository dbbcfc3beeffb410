"""8-device case, run by test_sharded.py in a subprocess with 8 fake CPU devices: the run on a
model sharded over a mesh gives the one-device numbers.
(Not collected by the default run: no ``test_`` prefix.)"""

import json
import os

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), (
    "run through tests/projects/act_calibration/test_sharded.py")

import numpy as np  # noqa: E402

from common.models.pretrained import shard_model  # noqa: E402
from projects.act_calibration import run  # noqa: E402
from tests.projects.act_calibration.test_run import _tiny_config  # noqa: E402
from tests.projects.act_calibration.tiny import tiny  # noqa: E402


def test_run_on_a_sharded_model_equals_one_device(tmp_path):
    model, tok = tiny()
    sharded = shard_model(model, "data=2,fsdp=2,tensor=2")
    assert len(sharded.blocks.attn.q_kernel[...].sharding.device_set) == 8
    run.run(_tiny_config(), tmp_path / "one", loaded=(model, tok))
    run.run(_tiny_config(), tmp_path / "many", loaded=(sharded, tok))
    a = json.loads((tmp_path / "one" / "summary.json").read_text())
    b = json.loads((tmp_path / "many" / "summary.json").read_text())
    assert a["heads"] == b["heads"]  # the search keeps the same heads
    for name, row in a["accuracy"].items():
        for k, v in row.items():
            np.testing.assert_allclose(b["accuracy"][name][k], v, atol=1e-6, err_msg=f"{name} {k}")
