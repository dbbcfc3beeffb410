"""One process of the host-memory test (test_sharded.py): load a checkpoint onto the global
mesh and print this process's resident-memory growth while loading, as one JSON line.

    python -m tests.common.models._rss_load FOLDER MESH [whole] [probe]

``whole`` reads the checkpoint into numpy first (the single-device loader's reading) and then
shards it: the contrast that shows what the measurement catches. ``probe`` then runs a capture
on the mesh (spanning every process) and compares the gathered logits and ``z`` with the whole
model on one local device. Multi-process through the
``HEADLAB_COORDINATOR`` variables (:func:`common.sharding.distributed.maybe_initialize`).
"""

import json
import sys

from common.sharding.distributed import maybe_initialize


def _status(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main() -> None:
    folder, mesh_spec = sys.argv[1], sys.argv[2]
    whole = "whole" in sys.argv[3:]
    maybe_initialize()
    import jax
    import numpy as np
    from flax import nnx

    from common import weights
    from common.models.pretrained import build_sharded_model
    from common.sharding import make_mesh

    mesh = make_mesh(mesh_spec)
    jax.numpy.zeros(1).block_until_ready()  # the backend up before the baseline
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    base = _status("VmRSS")
    ckpt = weights.load_checkpoint(folder) if whole else weights.open_checkpoint(folder)
    model = build_sharded_model(ckpt, mesh)
    jax.block_until_ready(nnx.state(model))
    peak = _status("VmHWM")
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    held = sum(s.data.nbytes for a in params for s in a.addressable_shards)
    # every shard this process holds equals the file's slice (read again, independently)
    full = weights.load_hf_folder(folder).tensors["model.layers.1.mlp.up_proj.weight"]
    up = nnx.state(model, nnx.Param)["blocks"]["mlp"]["up_kernel"][...]
    for s in up.addressable_shards:
        np.testing.assert_array_equal(np.asarray(s.data)[1], full.T[s.index[1:]])  # layer 1
    out = {"process": jax.process_index(), "processes": jax.process_count(),
           "local_devices": jax.local_device_count(), "devices": jax.device_count(),
           "base": base, "peak_growth": peak - base, "held": held,
           "model_bytes": sum(int(a.size) * a.dtype.itemsize for a in params)}
    if "probe" in sys.argv[3:]:
        # the forward and a capture on the mesh spanning both processes, gathered, against the
        # whole model on this process's first device
        from jax.experimental import multihost_utils

        from common.interp import run_with_cache
        from common.models.pretrained import build_model

        x = np.random.default_rng(0).integers(0, model.config.vocab_size, (8, 16))
        logits, cache = run_with_cache(model, x, names_filter="z", layers=1)
        got = multihost_utils.process_allgather(logits, tiled=True)
        z = multihost_utils.process_allgather(cache["z", 1], tiled=True)
        with jax.default_device(jax.local_devices()[0]):
            ref = build_model(weights.load_hf_folder(folder))
            want, ref_cache = run_with_cache(ref, x, names_filter="z", layers=1)
        out["logits_max_diff"] = float(np.abs(np.asarray(got) - np.asarray(want)).max())
        out["z_max_diff"] = float(np.abs(np.asarray(z) - np.asarray(ref_cache["z", 1])).max())
        out["logits_max"] = float(np.abs(np.asarray(want)).max())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
