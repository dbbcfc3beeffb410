"""The error every weight and tokenizer reader raises (below all of them, imports nothing)."""


class WeightsError(ValueError):
    """A checkpoint file or folder is unusable; the message names the file and the fault."""
