"""Head views: TransformerLens-order weight views as pure functions of a model.

The functions live in :mod:`common.models.views` (so that ``model.W_Q``, ``model.OV``, ...
need nothing above ``common.models``) and are re-exported here: ``W_Q, W_K, W_V``
``[layer, head, d_model, d_head]``, ``W_O [layer, head, d_head, d_model]``, ``OV``/``QK``
``[layer, head, d_model, d_model]``, ``W_E [vocab, d_model]``, ``W_U [d_model, vocab]``,
``b_O`` and the effective embedding; every one returns a :class:`~common.labelled.Labelled`.
"""

from common.models.views import (
    OV,
    QK,
    W_E,
    W_K,
    W_O,
    W_Q,
    W_U,
    W_V,
    LensConfig,
    b_O,
    effective_embedding,
    lens_config,
)

__all__ = ["OV", "QK", "W_E", "W_K", "W_O", "W_Q", "W_U", "W_V", "LensConfig", "b_O",
           "effective_embedding", "lens_config"]
