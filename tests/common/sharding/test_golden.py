"""Committed PartitionSpec dumps are diffed against the current rules and models."""

import json
import pathlib

import pytest

from tests.common.sharding.golden_dump import dump, golden_models

GOLDEN = pathlib.Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", sorted(golden_models()))
def test_partition_specs_match_golden_dump(name):
    want = json.loads((GOLDEN / f"{name}.json").read_text())
    got = dump(golden_models()[name])
    assert got["mesh"] == want["mesh"]
    assert sorted(got["params"]) == sorted(want["params"]), "parameter names changed"
    diff = {k: (want["params"][k], v) for k, v in got["params"].items() if v != want["params"][k]}
    assert not diff, (f"sharding changed for {len(diff)} params (regenerate with `python -m "
                      f"tests.common.sharding.golden_dump {GOLDEN}` if intended): {diff}")


def test_golden_dumps_show_head_parallelism():
    # Independent of the committed files: the rules as the design states them.
    lm = dump(golden_models()["lm_tiny"])["params"]
    assert lm["blocks/attn/q_kernel"]["spec"] == [None, "fsdp", "tensor"]
    assert lm["blocks/attn/o_kernel"]["spec"] == [None, "tensor", None, "fsdp"]
    assert lm["blocks/attn/q_kernel"]["logical"][0] == "layers"  # the stack, never split
    smol = dump(golden_models()["smollm2_135m"])["params"]
    # 9 heads and 3 KV heads do not divide tensor=4: only embed (576 = 2 * 288) is split.
    assert smol["blocks/attn/q_kernel"]["spec"] == [None, "fsdp"]
    assert smol["embed/embedding"]["spec"] == ["tensor", "fsdp"]
