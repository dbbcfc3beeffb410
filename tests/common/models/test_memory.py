"""Memory planning from Hugging Face configs (common/models/memory.py), checked against the
published parameter counts and against closed-form per-device byte counts. (That the plan
equals the bytes a sharded model really holds per device is checked on 8 devices in
_sharded_cases.py.)"""

import json

import pytest

from common.models.memory import NAMED_CONFIGS, hf_model_config, plan_memory

# Parameter counts of the published checkpoints: total_size / 2 of each bf16 model's
# model.safetensors.index.json on the Hugging Face hub.
PUBLISHED_PARAMS = {"llama3-8b": 8_030_261_248, "llama2-70b": 68_976_648_192,
                    "qwen2-7b": 7_615_616_512}


@pytest.mark.parametrize("name", sorted(NAMED_CONFIGS))
def test_named_configs_as_json_files_have_the_published_sizes(name, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(NAMED_CONFIGS[name]))
    cfg = hf_model_config(tmp_path)  # the folder, as for a checkpoint
    assert cfg.dtype == "bfloat16"
    plan = plan_memory(cfg, {"fsdp": 4, "tensor": 4}, batch=8, seq=128)
    assert plan.n_params == PUBLISHED_PARAMS[name]
    assert plan.param_bytes_total == 2 * PUBLISHED_PARAMS[name]


def test_llama3_8b_per_device_bytes_in_closed_form():
    cfg = hf_model_config("llama3-8b")
    L, d, kv, hd, V = 32, 4096, 8, 128, 128256
    norms = (2 * L + 1) * d  # RMSNorm scales: [layers, d] twice and the final one
    b, s = 8, 512
    plan = plan_memory(cfg, {"fsdp": 4, "tensor": 4}, batch=b, seq=s, sites=("z", "resid_pre"),
                       layers=(0, 5, 31), kv_len=s, last_only=False)
    # every matrix is split 16 ways (embed over fsdp, heads/mlp/vocab over tensor); the norm
    # scales, [.., d] only, 4 ways over fsdp
    assert plan.params == (PUBLISHED_PARAMS["llama3-8b"] - norms) * 2 // 16 + norms * 2 // 4
    # K and V [L, batch, len, kv_heads, head_dim] bf16: batch over fsdp (4), kv heads over
    # tensor (4)
    assert plan.kv_cache == 2 * L * (b // 4) * s * (kv // 4) * hd * 2
    # z [b, s, 32 heads, 128] split 4 x 4; resid_pre [b, s, d] split over batch only
    assert plan.sites == {"resid_pre": 3 * (b // 4) * s * d * 2,
                          "z": 3 * (b // 4) * s * (32 // 4) * hd * 2}
    assert plan.logits == (b // 4) * s * (V // 4) * 4  # float32, vocab over tensor
    assert plan.per_device_bytes == plan.params + plan.kv_cache + plan.captures + plan.logits


def test_indivisible_dimensions_are_counted_replicated():
    """Qwen2-7B has 28 query and 4 KV heads: on tensor=8 neither splits, so Q/K/V/O count whole
    on every device (as the rules place them), while the MLP (18944 = 8 x 2368) splits."""
    cfg = hf_model_config("qwen2-7b")
    t8 = plan_memory(cfg, {"tensor": 8}, batch=1, seq=1)
    t4 = plan_memory(cfg, {"tensor": 4}, batch=1, seq=1)
    d, L, hd = 3584, 28, 128
    attn = L * (2 * d * 28 * hd + 2 * d * 4 * hd + 28 * hd + 2 * 4 * hd) * 2  # q,o,k,v + biases
    mlp = L * 3 * d * 18944 * 2
    assert t8.params - t4.params == attn - attn // 4 - (mlp // 4 - mlp // 8) - (
        2 * 152064 * d * 2 // 4 - 2 * 152064 * d * 2 // 8)


def test_bad_config_is_one_clear_error(tmp_path):
    from common.weights import WeightsError

    with pytest.raises(WeightsError, match="no such config.json"):
        hf_model_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(WeightsError, match="unknown architecture"):
        hf_model_config(tmp_path)
    with pytest.raises(ValueError, match="unknown axes"):
        plan_memory(hf_model_config("llama3-8b"), {"model": 2}, batch=1, seq=1)
