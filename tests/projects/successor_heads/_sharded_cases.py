"""8-device case, run by test_sharded.py in a subprocess with 8 fake CPU devices: the
project's run, unchanged, on a model sharded over a mesh gives the single-device numbers.
(Not collected by the default run: no ``test_`` prefix.)"""

import json
import os

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), (
    "run through tests/projects/successor_heads/test_sharded.py")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common.models.pretrained import shard_model  # noqa: E402
from projects.successor_heads import run  # noqa: E402
from tests.projects.successor_heads.test_run import _tiny_config  # noqa: E402
from tests.projects.successor_heads.tiny import (  # noqa: E402
    ToyTokenizer,
    build,
    random_tensors,
    tiny_config,
)

# The numbers read from the model (scores, DLA, patching); the SAE and the toy model train
# with the shared loop on all 8 devices (a different batch split), so they are left out.
# (The random tiny model gets no list prompt right, so the in-context stage is skipped on both;
# its patching sweeps are compared on 8 devices in tests/common/models/_sharded_cases.py.)
PROBED = ("succession_scores", "copy_scores", "top_heads", "copy_top_heads", "per_class",
          "in_context", "contextual_ov", "natural", "in_context_skipped")


def test_successor_heads_run_on_a_sharded_model_equals_one_device(tmp_path):
    tok = ToyTokenizer()
    cfg = tiny_config(len(tok))
    model = build(cfg, random_tensors(cfg, seed=0))
    sharded = shard_model(model, "data=2,fsdp=2,tensor=2")
    q = sharded.blocks.attn.q_kernel[...]
    assert len(q.sharding.device_set) == 8 and q.sharding.spec[2] == "tensor"
    c = _tiny_config()
    c.mod10.enabled = False
    c.arithmetic.enabled = False
    one = run.run(c, tmp_path / "one", loaded=(model, tok))
    many = run.run(c, tmp_path / "many", loaded=(sharded, tok))
    a = json.loads((tmp_path / "one" / "summary.json").read_text())
    b = json.loads((tmp_path / "many" / "summary.json").read_text())
    compared = [k for k in PROBED if k in a]
    assert {"succession_scores", "copy_scores", "natural", "contextual_ov"} <= set(compared)
    for k in compared:
        la, lb = jax.tree.leaves(a[k]), jax.tree.leaves(b[k])
        assert len(la) == len(lb), k
        for x, y in zip(la, lb, strict=True):
            if isinstance(x, int | float) and not isinstance(x, bool):
                np.testing.assert_allclose(y, x, atol=1e-5, rtol=1e-5, err_msg=k)
            else:
                assert x == y, k
    assert one["figure_layout_problems"] == many["figure_layout_problems"] == {}
