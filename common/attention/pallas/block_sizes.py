"""Block sizes of the flash-attention kernels: a validated dataclass with per-platform defaults.

The forward kernel tiles ``q`` in ``block_q`` rows and ``k/v`` in ``block_kv`` rows; the
backward has two kernels (``dk/dv`` with the kv block outer, ``dq`` with the q block outer)
with their own sizes, defaulting to the forward ones.
"""

from __future__ import annotations

import dataclasses

# Sublane / lane granularity of a Mosaic TPU vreg tile (8 x 128 for 32-bit data).
_SUBLANE = 8
_LANE = 128


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (rows of the sequence axis) of the three kernels.

    Attributes:
      block_q, block_kv: forward tiles of queries and keys/values.
      block_q_dkv, block_kv_dkv: tiles of the ``dk/dv`` backward kernel (default: forward ones).
      block_q_dq, block_kv_dq: tiles of the ``dq`` backward kernel (default: forward ones).
    """

    block_q: int = 128
    block_kv: int = 128
    block_q_dkv: int | None = None
    block_kv_dkv: int | None = None
    block_q_dq: int | None = None
    block_kv_dq: int | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"BlockSizes.{f.name} must be a positive int, got {v!r}")
            if v % _SUBLANE:
                raise ValueError(
                    f"BlockSizes.{f.name}={v} must be a multiple of {_SUBLANE} (sublane tile)"
                )

    @property
    def fwd(self) -> tuple[int, int]:
        return self.block_q, self.block_kv

    @property
    def dkv(self) -> tuple[int, int]:
        return self.block_q_dkv or self.block_q, self.block_kv_dkv or self.block_kv

    @property
    def dq(self) -> tuple[int, int]:
        return self.block_q_dq or self.block_q, self.block_kv_dq or self.block_kv

    @classmethod
    def default(cls, platform: str) -> BlockSizes:
        """Defaults per platform (``tpu``, ``gpu``, ``cpu``/interpret).

        TPU: 512-row tiles keep the MXU busy and the per-step overhead (~0.35 us) small; the
        backward uses 256 for the ``dk/dv`` kernel, whose live set is larger. GPU: 128 x 64
        tiles fit the register file of one warpgroup. CPU (interpret mode): 128.
        """
        if platform == "tpu":
            return cls(512, 512, 256, 256, 256, 256)
        if platform == "gpu":
            return cls(128, 64)
        return cls(128, 128)

    def validate_for(self, platform: str) -> None:
        """Platform-specific checks: on TPU key tiles must fill whole 128-lane vregs."""
        if platform == "tpu":
            for name in ("block_kv", "block_kv_dkv", "block_kv_dq"):
                v = getattr(self, name)
                if v is not None and v % _LANE:
                    raise ValueError(
                        f"BlockSizes.{name}={v}: on TPU key tiles must be multiples of {_LANE}"
                    )


def fit_block(block: int, length: int, align: int = _SUBLANE) -> int:
    """The tile actually used for a sequence of ``length``: ``block``, or less for short ones."""
    return min(block, _round_up(length, align))
