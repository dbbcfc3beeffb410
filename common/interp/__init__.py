"""Interpretability on the per-head core: capture by site, interventions as data, head views,
patching sweeps and figures.

>>> logits, cache = run_with_cache(model, ids, names_filter=["z", "pattern"])
>>> cache["z", 3].shape, cache.axes("z")          # [batch, pos, head, d_head]
>>> model(ids, intervention=Intervention.ablate(model.config, [(3, 1)]))
>>> scores = activation_patching(model, clean, corrupted, logit_diff(a, b))  # [layer, head]

Capture itself (``run_with_cache``, ``forward``, ``ActivationCache``) lives with the models
(``common.models.capture``) so that ``model.run_with_cache`` needs nothing from this package; it
is re-exported here with the rest of the researcher's toolbox.
"""

from common.attention.hooks import SITE_AXES
from common.interp.intervention import Intervention, InterventionHooks, Patch, make_patch
from common.interp.metrics import FullLogitsMetric, LogitMetric, as_metric, logit_diff, logit_of
from common.interp.sweeps import (
    ablation_attribution,
    activation_patching,
    attribution_patching,
    direct_logit_attribution,
    final_norm_linear,
    head_ablation_sweep,
    metric_value,
    patch_sweep,
    site_gradients,
)
from common.interp.views import OV, QK, W_E, W_K, W_O, W_Q, W_U, W_V, b_O, effective_embedding
from common.labelled import Labelled
from common.models.activation_cache import ActivationCache
from common.models.capture import CaptureHooks, forward, resolve_sites, run_with_cache

__all__ = [
    "OV",
    "QK",
    "SITE_AXES",
    "W_E",
    "W_K",
    "W_O",
    "W_Q",
    "W_U",
    "W_V",
    "ActivationCache",
    "CaptureHooks",
    "FullLogitsMetric",
    "Intervention",
    "InterventionHooks",
    "Labelled",
    "LogitMetric",
    "Patch",
    "ablation_attribution",
    "activation_patching",
    "as_metric",
    "attribution_patching",
    "b_O",
    "direct_logit_attribution",
    "effective_embedding",
    "final_norm_linear",
    "forward",
    "head_ablation_sweep",
    "logit_diff",
    "logit_of",
    "make_patch",
    "metric_value",
    "patch_sweep",
    "plot_attention_patterns",
    "plot_head_scores",
    "resolve_sites",
    "run_with_cache",
    "site_gradients",
]


def __getattr__(name):  # figures pull in matplotlib: load on first use
    if name in ("plot_attention_patterns", "plot_head_scores"):
        from common.interp import figures

        return getattr(figures, name)
    raise AttributeError(name)
