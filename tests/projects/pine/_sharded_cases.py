"""8-device case, run by test_sharded.py in a subprocess with 8 fake CPU devices: PINE and its
baselines on a model sharded over a mesh give the single-device logits.
(Not collected by the default run: no ``test_`` prefix.)"""

import os

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), (
    "run through tests/projects/pine/test_sharded.py")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from common.models.pretrained import shard_model  # noqa: E402
from projects.pine import pine_logits  # noqa: E402
from projects.pine.method import METHODS  # noqa: E402
from tests.projects.pine.test_pine import _prompt  # noqa: E402
from tests.projects.pine.tiny import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def models():
    one = tiny_model(seed=1)
    many = shard_model(one, "data=2,fsdp=2,tensor=2")
    q = many.blocks.attn.q_kernel[...]
    assert len(q.sharding.device_set) == 8 and q.sharding.spec[2] == "tensor"
    return one, many


@pytest.mark.parametrize("method", METHODS)
def test_pine_logits_on_a_sharded_model_equal_one_device(models, method):
    one, many = models
    pre, segs, suf = _prompt(3, (3, 2, 4))
    a = pine_logits(one, pre, segs, suf, method)
    b = pine_logits(many, pre, segs, suf, method)
    assert a.shape == b.shape == (len(suf), one.config.vocab_size)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
