"""One process of the host-memory test (test_sharded.py): load a checkpoint onto the global
mesh and print this process's resident-memory growth while loading, as one JSON line.

    python -m tests.common.models._rss_load FOLDER MESH [whole]

``whole`` reads the checkpoint into numpy first (the single-device loader's reading) and then
shards it: the contrast that shows what the measurement catches. Multi-process through the
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
    whole = len(sys.argv) > 3 and sys.argv[3] == "whole"
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
    print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                      "local_devices": jax.local_device_count(), "devices": jax.device_count(),
                      "base": base, "peak_growth": peak - base, "held": held,
                      "model_bytes": sum(int(a.size) * a.dtype.itemsize for a in params)}),
          flush=True)


if __name__ == "__main__":
    main()
