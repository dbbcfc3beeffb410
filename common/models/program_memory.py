"""What a compiled forward program needs in memory, from the compiler (``memory_analysis``).

:func:`forward_memory` lowers and compiles the very program that ``model(ids,
intervention=...)`` runs (the jitted forward of :mod:`common.models.capture`, with the same
arguments) and reads XLA's accounting: the arguments (parameters, token ids, the
intervention's arrays), the outputs (the logits) and the temporaries (activations, attention
scores, everything the program allocates while it runs). Nothing runs; the compile is cached
with the forward's own, so a later ``model(...)`` call with the same shapes reuses it.
:mod:`common.models.memory` estimates the kept arrays of a sharded model without compiling.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from common.models.capture import _capture_jit, model_placement, placed_ids
from common.models.compile_cache import enable as enable_compilation_cache


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """Bytes of one compiled program (per device): ``temp`` (allocated while it runs),
    ``argument`` (its inputs), ``output`` (its results); ``total`` their sum (an upper bound:
    an output may alias an argument)."""

    temp: int
    argument: int
    output: int

    @property
    def total(self) -> int:
        return self.temp + self.argument + self.output

    def as_dict(self) -> dict[str, int]:
        return {"temp": self.temp, "argument": self.argument, "output": self.output,
                "total": self.total}


def program_memory(compiled) -> ProgramMemory:
    """:class:`ProgramMemory` of a ``jax.jit(...).lower(...).compile()`` result."""
    mem = compiled.memory_analysis()
    if mem is None:
        raise ValueError("program_memory: this backend reports no memory analysis")
    return ProgramMemory(int(mem.temp_size_in_bytes), int(mem.argument_size_in_bytes),
                         int(mem.output_size_in_bytes))


def forward_memory(model, input_ids: jax.Array, *, intervention: Any = None,
                   positions: jax.Array | None = None, last_only: bool = False) -> ProgramMemory:
    """Memory of the compiled ``model(input_ids [batch, seq], intervention=...)`` program
    (logits ``[batch, seq|1, vocab]``)."""
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
    if intervention is not None and hasattr(intervention, "validate"):
        intervention.validate(model.config)
    enable_compilation_cache()
    graphdef, state = nnx.split(model)
    placement = model_placement(model, state)
    lowered = _capture_jit.lower(graphdef, state, placed_ids(input_ids, placement), positions,
                                 None, intervention, sites=(),
                                 layers=tuple(range(model.config.n_layers)),
                                 last_only=last_only, placement=placement)
    return program_memory(lowered.compile())
