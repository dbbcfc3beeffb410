"""Runs _sharded_cases.py under pytest in a subprocess with 8 fake CPU devices: a sharded load
of a tiny GQA Llama checkpoint and the probes (forward, captures, an intervention, a patching
sweep, attribution patching) under a mesh, each equal to the single-device result."""

import pathlib
import subprocess
import sys

import pytest

from tests.eight_devices import ROOT, run_on_eight_devices


def _cases(select: str) -> None:
    run_on_eight_devices(pathlib.Path(__file__).with_name("_sharded_cases.py"), "-k", select,
                         timeout=600)


@pytest.mark.multidevice
def test_sharded_load_and_probes_on_eight_devices():
    _cases("not smollm2")


@pytest.mark.slow
@pytest.mark.smollm2
@pytest.mark.multidevice
def test_smollm2_sharded_on_eight_devices(smollm2_path):  # noqa: ARG001 - skips without it
    _cases("smollm2")


def write_checkpoint(folder: pathlib.Path, *, d=1024, heads=16, kv=4, mlp=4096, layers=4,
                     vocab=16384, per_file_layers=2) -> int:
    """A random Llama checkpoint (float32 safetensors in several shards + index), written with
    the safetensors package; returns its bytes."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    hd = d // heads
    cfg = {"model_type": "llama", "hidden_size": d, "intermediate_size": mlp,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
           "vocab_size": vocab, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "max_position_embeddings": 256, "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(cfg))

    def w(*shape):
        return (0.02 * rng.standard_normal(shape, dtype=np.float32))

    groups = [{"model.embed_tokens.weight": w(vocab, d)}]
    for i0 in range(0, layers, per_file_layers):
        g = {}
        for i in range(i0, min(layers, i0 + per_file_layers)):
            p = f"model.layers.{i}."
            g.update({p + "input_layernorm.weight": 1 + w(d),
                      p + "post_attention_layernorm.weight": 1 + w(d),
                      p + "self_attn.q_proj.weight": w(heads * hd, d),
                      p + "self_attn.k_proj.weight": w(kv * hd, d),
                      p + "self_attn.v_proj.weight": w(kv * hd, d),
                      p + "self_attn.o_proj.weight": w(d, heads * hd),
                      p + "mlp.gate_proj.weight": w(mlp, d), p + "mlp.up_proj.weight": w(mlp, d),
                      p + "mlp.down_proj.weight": w(d, mlp)})
        groups.append(g)
    groups.append({"model.norm.weight": 1 + w(d), "lm_head.weight": w(vocab, d)})
    index, total = {}, 0
    for k, g in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(g, str(folder / name))
        index.update(dict.fromkeys(g, name))
        total += sum(a.nbytes for a in g.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": index}))
    return total


@pytest.mark.slow
@pytest.mark.multiprocess
def test_peak_host_memory_of_a_sharded_load_stays_below_the_model(tmp_path):
    """Two processes of 4 CPU devices each load a 377 MB checkpoint onto one 8-device mesh
    (fsdp=2, tensor=4: a device's share is 1/8 of the model). Each process reads only the
    slices its devices hold, so its resident memory grows by about half the model, never by
    the whole of it (measured: VmHWM after loading minus VmRSS before, in the process). The
    loaded model then runs a capture across both processes with one device's numbers."""
    from tests.common.train._runs import env, free_port

    total = write_checkpoint(tmp_path)
    port = free_port()
    cmd = [sys.executable, "-m", "tests.common.models._rss_load", str(tmp_path),
           "fsdp=2,tensor=4", "probe"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env(4, HEADLAB_COORDINATOR=f"127.0.0.1:{port}",
                                                 HEADLAB_NUM_PROCESSES=2, HEADLAB_PROCESS_ID=i))
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    import json

    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-4000:]
    res = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    for r in res:
        assert r["processes"] == 2 and r["devices"] == 8 and r["local_devices"] == 4
        assert r["model_bytes"] == total
        # every matrix is split 8 ways (half per process); only the norm scales, split over
        # fsdp alone, are repeated on the tensor axis (55 kB more)
        assert abs(r["held"] - total // 2) < 1e-3 * total
        assert r["peak_growth"] < total, (r, total)
        # then a capture on the mesh spanning both processes, gathered, equals the whole model
        # on one device (contractions over d_model = 1024 summed per fsdp shard: ~1e-6 relative)
        assert r["logits_max_diff"] <= 1e-5 * r["logits_max"] and r["z_max_diff"] < 1e-5, r
    print(f"model {total / 2**20:.0f} MiB; per process: held "
          f"{[r['held'] / 2**20 for r in res]} MiB, peak RSS growth "
          f"{[round(r['peak_growth'] / 2**20) for r in res]} MiB")
