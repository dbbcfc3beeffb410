"""Pallas flash-attention kernels (the ``pallas`` attention backend).

See :mod:`common.attention.pallas.flash_tpu` for the kernels and
:mod:`common.attention.pallas.api` for the entry points.
"""

from common.attention.pallas.api import flash_attention, interpret_mode, pallas_attention
from common.attention.pallas.block_mask import PineMask, block_states, mask_operands
from common.attention.pallas.block_sizes import BlockSizes

__all__ = [
    "BlockSizes",
    "PineMask",
    "block_states",
    "flash_attention",
    "interpret_mode",
    "mask_operands",
    "pallas_attention",
]
