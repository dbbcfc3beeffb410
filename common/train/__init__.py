"""The shared training loop, its jitted step, populations of models, and orbax checkpoints."""

from common.train.loop import NonFiniteError, Task, TrainConfig, TrainResult, batch_crc, train
from common.train.orbax_checkpoint import Checkpointer, CorruptCheckpointWarning
from common.train.population import MODELS, Group, Population, over_models
from common.train.step import cast_floating, leaf_names, make_train_step

__all__ = [
    "MODELS",
    "Checkpointer",
    "CorruptCheckpointWarning",
    "Group",
    "NonFiniteError",
    "Population",
    "Task",
    "TrainConfig",
    "TrainResult",
    "batch_crc",
    "cast_floating",
    "leaf_names",
    "make_train_step",
    "over_models",
    "train",
]
