"""The shared training loop, its jitted step, and orbax checkpoints with the data state."""

from common.train.checkpoint import Checkpointer, CorruptCheckpointWarning
from common.train.loop import NonFiniteError, Task, TrainConfig, TrainResult, batch_crc, train
from common.train.step import cast_floating, leaf_names, make_train_step

__all__ = [
    "Checkpointer",
    "CorruptCheckpointWarning",
    "NonFiniteError",
    "Task",
    "TrainConfig",
    "TrainResult",
    "batch_crc",
    "cast_floating",
    "leaf_names",
    "make_train_step",
    "train",
]
