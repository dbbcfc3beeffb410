"""Pallas flash-attention kernels: the ``pallas`` attention backend.

Pallas lowerings in the installed JAX (0.10.2), checked by import and by running:

* **Mosaic TPU** (``jax.experimental.pallas.tpu``): ``pallas_call`` with
  ``PrefetchScalarGridSpec`` (scalar prefetch into SMEM), VMEM scratch, ``dimension_semantics``.
  On CPU the same kernels run in TPU interpret mode: ``interpret=True`` (an HLO interpreter of
  the grid) or ``pltpu.InterpretParams(detect_races=True, ...)``, which simulates VMEM/HBM,
  DMAs and semaphores and records data races (``interpret_pallas_call.races.races_found``).
  **This is the primary path** (:mod:`.flash_tpu`): forward, ``dk/dv`` and ``dq`` kernels.
* **Mosaic GPU** (``jax.experimental.pallas.mosaic_gpu``, ``plgpu``): ``plgpu.kernel`` with
  warpgroup-level arrays, TMA copies (``copy_gmem_to_smem``), mbarriers, ``wgmma``; a GPU
  interpret mode (``InterpretGPUParams``) simulates copies, barriers and wgmma on CPU but has no
  rule for ``layout_cast``, transposed or register wgmma operands, or ``run_state``.
  :mod:`.flash_gpu` is a forward kernel for it (see there for scope and verification status);
  it is opt-in (``HEADLAB_PALLAS_GPU=1``) until ``tools/bench_attention.py --device-check``
  has run it on a GPU. The TPU kernels do not lower on GPU (scalar prefetch and VMEM scratch
  are Mosaic TPU constructs), so there is no "TPU-style kernel on GPU" fallback.
* **Triton** (``jax.experimental.pallas.triton``): still importable, deprecated; not used.
  ``jax.experimental.pallas.ops`` no longer ships kernels in this version.

Features of the TPU path: causal masks in arbitrary order positions (queries right-aligned to
keys by default, as with a KV cache), padding (``kv_valid``), packed sequences (segment ids),
dense ``[batch|1, heads|1, q, kv]`` masks, the PINE mask family
(:class:`~common.attention.masks.PineMask`), all as a block-sparse description
(:mod:`.block_mask`) whose empty blocks are skipped without fetching their K/V; grouped-query
attention by index maps (K/V never repeated); per-head scale; softcap; the logsumexp as an
optional, differentiable output; odd lengths (padded to tiles).

Per-head position ids (PINE) go through pre-rotated q/k: see :mod:`.api`.

Fused ACT calibration (``flash_attention(..., act_sinks=, act_beta=)``): the sink columns are
given (chosen beforehand, e.g. by the column-mean rule of ``papers/act_calibration.md`` §3,
which needs every query's probabilities and so cannot be decided inside one query tile), and
the kernel keeps two accumulators (sink and non-sink mass) so the calibrated pattern
``β·A`` on sinks and ``A·(1 + (1-β)·s/r)`` elsewhere is applied exactly at the end of the
row. Forward only: ACT is an inference-time edit.
"""

from common.attention.pallas.api import (
    flash_attention,
    interpret_mode,
    pallas_attention,
    recompute_pattern,
)
from common.attention.pallas.block_mask import block_states, mask_operands
from common.attention.pallas.block_sizes import BlockSizes

__all__ = [
    "BlockSizes",
    "block_states",
    "flash_attention",
    "interpret_mode",
    "mask_operands",
    "pallas_attention",
    "recompute_pattern",
]
