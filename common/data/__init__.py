"""Grain input pipelines: generated, in-memory, ArrayRecord and TFDS sources; process-sharded."""

from common.data.pipeline import batched_dataset, generated_batches, iterate, stack_examples
from common.data.sources import (
    ArrayRecordExamples,
    ArraySource,
    InducedTokens,
    decode_example,
    encode_example,
    write_array_record,
)

__all__ = [
    "ArrayRecordExamples",
    "ArraySource",
    "InducedTokens",
    "batched_dataset",
    "decode_example",
    "encode_example",
    "generated_batches",
    "iterate",
    "stack_examples",
    "write_array_record",
]
