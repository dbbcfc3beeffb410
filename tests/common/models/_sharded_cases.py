"""8-device cases of the sharded loader and the probes under a mesh; run by test_sharded.py in a
subprocess with 8 fake CPU devices. (Not collected by the default run: no ``test_`` prefix.)

A tiny random Llama with grouped-query attention (8 query heads, 4 KV heads) is saved by
transformers as a sharded safetensors checkpoint (several ``model-0000k-of-0000n`` files and an
index). It is loaded on one device (the established loader, which reads the whole checkpoint
into numpy) and on a ``data=2, fsdp=2, tensor=2`` mesh (every tensor read slice by slice onto
its devices); every result of the sharded model must equal the single-device one.
"""

import os

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), (
    "run through tests/common/models/test_sharded.py")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from common.interp import Intervention, run_with_cache  # noqa: E402
from common.interp.metrics import LogitMetric  # noqa: E402
from common.interp.sweeps import (  # noqa: E402
    _sweep_jit,
    activation_patching,
    attribution_patching,
    patch_sweep,
    sweep_program,
)
from common.models import load_pretrained  # noqa: E402
from common.sharding import make_mesh  # noqa: E402

MESH = "data=2,fsdp=2,tensor=2"
BATCH = ("data", "fsdp")  # the batch rule on this mesh
# The rule table of common/sharding/rules.py written out by hand for this model's parameters
# (embed -> fsdp, heads/kv_heads/mlp/vocab -> tensor, layers and head_dim replicated).
EXPECTED_SPECS = {
    "blocks.attn.q_kernel": P(None, "fsdp", "tensor"),
    "blocks.attn.k_kernel": P(None, "fsdp", "tensor"),
    "blocks.attn.v_kernel": P(None, "fsdp", "tensor"),
    "blocks.attn.o_kernel": P(None, "tensor", None, "fsdp"),
    "blocks.attn_norm.scale": P(None, "fsdp"),
    "blocks.mlp_norm.scale": P(None, "fsdp"),
    "blocks.mlp.gate_kernel": P(None, "fsdp", "tensor"),
    "blocks.mlp.up_kernel": P(None, "fsdp", "tensor"),
    "blocks.mlp.down_kernel": P(None, "tensor", "fsdp"),
    "embed.embedding": P("tensor", "fsdp"),
    "final_norm.scale": P("fsdp"),
    "lm_head": P("fsdp", "tensor"),
}
ATOL = 1e-6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=64, rope_theta=1000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=False)
    model = tf.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny_gqa")
    model.save_pretrained(path, max_shard_size="40KB", safe_serialization=True)
    shards = sorted(p.name for p in path.glob("model-*.safetensors"))
    assert len(shards) > 3 and (path / "model.safetensors.index.json").is_file()
    return path


@pytest.fixture(scope="module")
def single(folder):
    return load_pretrained(folder, require_tokenizer=False)[0]


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MESH)


@pytest.fixture(scope="module")
def sharded(folder, mesh):
    return load_pretrained(folder, require_tokenizer=False, mesh=mesh)[0]


def _flat(model):
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {".".join(str(k.key) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(pure)[0]}


def _np(x):
    return np.asarray(jax.device_get(x))


def ids(seed=0, b=8, s=10):
    return np.random.default_rng(seed).integers(0, 96, (b, s))


def test_sharded_load_is_bit_identical_with_every_shard_in_place(single, sharded, mesh):
    a, b = _flat(single), _flat(sharded)
    assert set(a) == set(b) == set(EXPECTED_SPECS)
    for name, full in a.items():
        arr = b[name]
        full = _np(full)
        assert arr.dtype == full.dtype == np.float32, name
        assert arr.sharding.mesh == mesh, name
        assert arr.sharding.spec == EXPECTED_SPECS[name], (name, arr.sharding.spec)
        assert len(arr.addressable_shards) == 8
        for shard in arr.addressable_shards:  # every device's copy, replicas included
            np.testing.assert_array_equal(_np(shard.data), full[shard.index], err_msg=name)
        np.testing.assert_array_equal(_np(arr), full, err_msg=name)
    # a parameter split 8 ways holds an eighth of it per device
    q = b["blocks.attn.q_kernel"]
    assert q.addressable_shards[0].data.size * 4 == q.size  # fsdp=2 x tensor=2


def test_forward_equals_single_device_and_transformers(folder, single, sharded):
    import torch
    import transformers as tf

    x = ids()
    want = _np(single(x))
    got = sharded(x)
    np.testing.assert_allclose(_np(got), want, atol=ATOL, rtol=0)
    assert np.abs(want).max() > 0.1  # logits of some size: the comparison is not vacuous
    hf = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(x)).logits.numpy()
    np.testing.assert_allclose(_np(got), ref, atol=1e-5, rtol=0)  # test_hf_parity's tolerance


def test_captures_equal_and_split_on_batch_and_heads(single, sharded):
    x = ids(1)
    names = ("z", "k", "pattern", "resid_post", "head_out")
    _, want = run_with_cache(single, x, names_filter=names)
    logits, got = run_with_cache(sharded, x, names_filter=names)
    assert logits.sharding.spec[0] == BATCH
    for site in names:
        for layer in range(3):
            np.testing.assert_allclose(_np(got[site, layer]), _np(want[site, layer]), atol=ATOL,
                                       rtol=0, err_msg=f"{site}@{layer}")
    assert got["z", 0].sharding.spec == P(BATCH, None, "tensor")  # [batch, pos, head, d_head]
    assert got["k", 2].sharding.spec == P(BATCH, None, "tensor")  # kv heads on tensor too
    assert got["pattern", 1].sharding.spec == P(BATCH, "tensor")  # [batch, head, q, k]
    assert got["head_out", 1].sharding.spec == P(BATCH, None, "tensor")
    assert got["resid_post", 1].sharding.spec == P(BATCH)


def _logit_diff(logits):  # [batch, 1, 2]: right minus wrong answer, mean over the batch
    return (logits[..., 0] - logits[..., 1]).mean()


def _metric(x):
    return LogitMetric(fn=_logit_diff, positions=(-1,),
                       tokens=jnp.asarray(np.stack([x[:, 0], x[:, 1]], axis=1)))


def _to_first(pattern, params, layer):  # noqa: ARG001 - a probability transform
    first = jnp.zeros_like(pattern).at[..., 0].set(1.0)
    return (1 - params) * pattern + params * first


def test_intervention_equals_single_device(single, sharded):
    x = ids(2)
    L, H, D = 3, 8, 8
    rng = np.random.default_rng(5)
    iv = Intervention(
        gate=jnp.asarray(rng.uniform(0, 1, (L, H)), jnp.float32),
        mix_a=jnp.asarray(rng.uniform(0, 0.5, (L, H)), jnp.float32),
        mix_v=jnp.asarray(rng.normal(size=(L, H, D)), jnp.float32),
        mix_where=jnp.asarray(np.arange(10) >= 5)[None],
        prob_transform=_to_first, prob_params=jnp.float32(0.3),
        prob_heads=jnp.asarray(rng.uniform(size=(L, H)) > 0.5),
        q_positions=jnp.asarray(np.broadcast_to(np.arange(10)[::-1], (8, 10)).copy()),
        kv_positions=jnp.asarray(np.broadcast_to(np.arange(10)[::-1], (8, 10)).copy()),
        edit_layers=(1, 2))
    want = _np(single(x, intervention=iv))
    got = _np(sharded(x, intervention=iv))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert np.abs(want - _np(single(x))).max() > 1e-2  # the intervention does something
    # a mask (segments, and a dense per-head mask) replacing the model's
    from common.attention.masks import Mask

    seg = jnp.asarray(np.repeat(np.arange(2), 5)[None].repeat(8, 0))
    dense = jnp.asarray(np.tril(np.ones((10, 10), bool))).at[:, 0].set(False).at[0, 0].set(True)
    for mask in (Mask(causal=True, q_segment_ids=seg, kv_segment_ids=seg),
                 Mask(causal=True, dense=dense[None, None])):
        iv = Intervention(mask=mask, edit_layers=(0, 2))
        want = _np(single(x, intervention=iv))
        np.testing.assert_allclose(_np(sharded(x, intervention=iv)), want, atol=ATOL, rtol=0)
        assert np.abs(want - _np(single(x))).max() > 1e-2


def test_patching_sweep_equals_single_device_with_variants_on_data(single, sharded):
    x = ids(3)
    metric = _metric(x)
    want = patch_sweep(single, x, 0.0, metric)
    got = patch_sweep(sharded, x, 0.0, metric)
    assert got.axes == want.axes == ("layer", "head")
    np.testing.assert_allclose(_np(got.values), _np(want.values), atol=ATOL, rtol=0)
    assert np.ptp(_np(want.values)) > 1e-3
    # the compiled sweep takes its 8 variants (one per head) split over the data axis
    args, kw, _ = sweep_program(sharded, x, 0.0, metric)
    masks = args[4]
    assert masks.shape[0] == 8 and masks.sharding.spec == P("data")
    compiled = _sweep_jit.lower(*args, **kw).compile()
    # (graphdef is static: the compiled inputs are state, resid, src, masks, ...)
    assert compiled.input_shardings[0][3].spec == P("data")
    chunked = patch_sweep(sharded, x, 0.0, metric, chunk=4)  # lax.map over data-split variants
    np.testing.assert_allclose(_np(chunked.values), _np(want.values), atol=ATOL, rtol=0)
    clean, corrupt = ids(4), ids(5)
    metric = _metric(clean)
    w = activation_patching(single, clean, corrupt, metric, per_position=True)
    g = activation_patching(sharded, clean, corrupt, metric, per_position=True)
    np.testing.assert_allclose(_np(g.values), _np(w.values), atol=ATOL, rtol=0)


def test_direct_logit_attribution_equals_single_device(single, sharded):
    from common.interp.sweeps import direct_logit_attribution

    x = ids(13)
    w = direct_logit_attribution(single, x, x[:, 0], x[:, 1])
    g = direct_logit_attribution(sharded, x, x[:, 0], x[:, 1])
    assert g.axes == w.axes == ("layer", "head")
    np.testing.assert_allclose(_np(g.values), _np(w.values), atol=ATOL, rtol=0)
    assert np.abs(_np(w.values)).max() > 1e-3


def test_attribution_patching_equals_single_device(single, sharded):
    clean, corrupt = ids(6), ids(7)
    metric = _metric(clean)
    for site in ("z", "v"):
        w = attribution_patching(single, clean, corrupt, metric, site=site, per_position=True)
        g = attribution_patching(sharded, clean, corrupt, metric, site=site, per_position=True)
        np.testing.assert_allclose(_np(g.values), _np(w.values), atol=ATOL, rtol=0)
        assert np.abs(_np(w.values)).max() > 1e-3


def test_memory_plan_equals_the_bytes_each_device_holds(folder, mesh):
    """plan_memory's per-device bytes against what a bf16 sharded model and its captures really
    hold on each device (the largest over devices)."""
    from common.models.memory import plan_memory

    def per_device(arrays):
        held = {}
        for a in arrays:
            for s in a.addressable_shards:
                held[s.device] = held.get(s.device, 0) + s.data.nbytes
        return max(held.values())

    model = load_pretrained(folder, require_tokenizer=False, mesh=mesh, dtype="bfloat16")[0]
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    x = ids(8)
    sites = ("z", "k", "resid_post", "pattern", "attn_scores", "ln1_scale", "head_out")
    logits, cache = run_with_cache(model, x, names_filter=sites, layers=(0, 2), last_only=True)
    plan = plan_memory(model.config, dict(mesh.shape), batch=8, seq=10, sites=sites,
                       layers=(0, 2), last_only=True)
    assert plan.params == per_device(params)
    for site in sites:  # bf16 sites and the float32 ones (pattern, scores, norm scales)
        assert plan.sites[site] == per_device(cache[site, i] for i in (0, 2)), site
    assert plan.logits == per_device([logits])
    assert plan.n_params * 2 == plan.param_bytes_total == sum(a.nbytes for a in params)


def test_gguf_sharded_load_is_bit_identical(tmp_path, mesh):
    """A llama.cpp GGUF (Q8_0 and F32 tensors, Q/K rows permuted) loads onto the mesh with the
    same values as the single-device loader (the handles dequantise a tensor, then slice)."""
    from tests.common.weights.tiny import tiny_llama, write_gguf

    path = write_gguf(tmp_path / "tiny.gguf", tiny_llama(96, num_attention_heads=8,
                                                         num_key_value_heads=4))
    one = load_pretrained(path, require_tokenizer=False)[0]
    many = load_pretrained(path, require_tokenizer=False, mesh=mesh)[0]
    a, b = _flat(one), _flat(many)
    assert set(a) == set(b)
    for name in a:
        assert b[name].sharding.spec == EXPECTED_SPECS[name], name
        np.testing.assert_array_equal(_np(b[name]), _np(a[name]), err_msg=name)
    x = ids(9)
    np.testing.assert_allclose(_np(many(x)), _np(one(x)), atol=ATOL, rtol=0)


def test_smollm2_gguf_sharded_equals_one_device(smollm2_path, mesh):
    """The real model (Q4_1/Q8_0 GGUF; 9 heads and 3 KV heads, which tensor=2 does not divide,
    so the rules keep them whole and split the rest): logits of the sharded load equal one
    device's."""
    one, tok = load_pretrained(smollm2_path)
    many, _ = load_pretrained(smollm2_path, mesh=mesh)
    q = many.blocks.attn.q_kernel[...]
    assert q.sharding.spec == P(None, "fsdp")  # heads not divisible: replicated
    assert many.embed.embedding[...].sharding.spec == P("tensor", "fsdp")
    x = np.asarray([tok.encode("The capital of France is Paris. The capital of Italy is")] * 4)
    np.testing.assert_array_equal(_np(many.blocks.mlp.up_kernel[...]),
                                  _np(one.blocks.mlp.up_kernel[...]))
    # 30 layers of float32 with the contractions over d_model summed in another order (partial
    # sums per fsdp shard; the first position carries SmolLM2's huge attention-sink residual):
    # measured max 1.4e-4 at logits ~3; the SmolLM2 tests' tolerance against transformers
    np.testing.assert_allclose(_np(many(x)), _np(one(x)), atol=1e-4, rtol=1e-4)


def test_large_models_load_in_bfloat16_and_custom_rules_place_them(folder, single, mesh,
                                                                   monkeypatch):
    """From BF16_FROM_PARAMS parameters the sharded load defaults to bfloat16 (parameters and
    compute): each value is the float32 one rounded to bf16. Rules given by the caller place
    the parameters (here: embed not split, heads on tensor)."""
    import ml_dtypes

    from common.models import pretrained
    from common.sharding import DEFAULT_RULES

    monkeypatch.setattr(pretrained, "BF16_FROM_PARAMS", 1000)  # the tiny model counts as large
    rules = tuple((k, None if k == "embed" else v) for k, v in DEFAULT_RULES)
    # (the mesh as a spec string, as the projects' ``mesh`` config field gives it)
    big = load_pretrained(folder, require_tokenizer=False, mesh=MESH, rules=rules)[0]
    assert big.config.dtype == "bfloat16" and big.sharding_rules == rules
    a, b = _flat(single), _flat(big)
    for name, arr in b.items():
        assert arr.dtype == jnp.bfloat16, name
        np.testing.assert_array_equal(_np(arr), _np(a[name]).astype(ml_dtypes.bfloat16))
    assert b["blocks.attn.q_kernel"].sharding.spec == P(None, None, "tensor")
    assert b["embed.embedding"].sharding.spec == P("tensor")
    assert b["embed.embedding"].sharding.mesh.shape == mesh.shape
    x = ids(10)
    got, want = _np(big(x)), _np(single(x))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=0.05, rtol=0)  # bf16 compute
    assert np.abs(got - want).max() > 0  # and it did compute in bf16


def test_greedy_generation_equals_single_device(single, sharded):
    """Decoding with the KV cache (left-padded prompts of different lengths) on the mesh."""
    from common.models.generation import generate

    rng = np.random.default_rng(11)
    prompts = [rng.integers(0, 96, n).tolist() for n in (3, 7, 5, 7)]
    want = generate(single, prompts, 8, eos_token_id=())
    assert generate(sharded, prompts, 8, eos_token_id=()) == want
    assert len({tuple(w) for w in want}) > 1


def test_qwen2_with_qkv_biases_loads_sharded(tmp_path, mesh):
    """Qwen2 (q/k/v biases [layers, heads, head_dim], heads on tensor; tied embeddings) from
    one safetensors file: bit-identical, each bias split as its rule says, same logits."""
    from tests.common.weights.tiny import tiny_hf

    tiny_hf("qwen2").save_pretrained(tmp_path, safe_serialization=True)
    one = load_pretrained(tmp_path, require_tokenizer=False)[0]
    many = load_pretrained(tmp_path, require_tokenizer=False, mesh=mesh)[0]
    a, b = _flat(one), _flat(many)
    assert set(a) == set(b) and "blocks.attn.q_bias" in b and "lm_head" not in b
    for name in a:
        np.testing.assert_array_equal(_np(b[name]), _np(a[name]), err_msg=name)
    assert b["blocks.attn.q_bias"].sharding.spec == P(None, "tensor")
    assert b["blocks.attn.k_bias"].sharding.spec == P(None, "tensor")
    x = np.random.default_rng(12).integers(0, 97, (8, 9))
    np.testing.assert_allclose(_np(many(x)), _np(one(x)), atol=ATOL, rtol=0)
