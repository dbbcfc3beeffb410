"""Interpretability on the per-head core: capture by site, interventions as data, head views,
patching sweeps and figures.

>>> logits, cache = run_with_cache(model, ids, names_filter=["z", "pattern"])
>>> cache["z", 3].shape, cache.axes("z")          # [batch, pos, head, d_head]
>>> cache["blocks.3.attn.hook_z"], cache["z", -1]   # TransformerLens names; the last layer
>>> model(ids, intervention=Intervention.ablate(model, [(3, 1)]))
>>> model.W_Q, model.OV, model.cfg.d_head              # [layer, head, d_model, d_head], ...
>>> exact = activation_patching(model, clean, corrupted, logit_diff(a, b))  # [layer, head]
>>> print(compare_patching(exact, attribution_patching(model, clean, corrupted, logit_diff(a, b))))

Every result is a :class:`Labelled` (names and coordinates; usable as an array; see
``common.labelled`` for the indexing rule); both patching functions return a
:class:`PatchingResult` on one scale: ``metric(patched) - metric(corrupted)``, optionally
normalised so that clean = 1 and corrupted = 0.

Capture itself (``run_with_cache``, ``forward``, ``ActivationCache``) lives with the models
(``common.models.capture``) so that ``model.run_with_cache`` needs nothing from this package; it
is re-exported here with the rest of the researcher's toolbox.
"""

from common.attention.hooks import SITE_AXES
from common.interp.intervention import Intervention, InterventionHooks, Patch, make_patch
from common.interp.metrics import (
    FullLogitsMetric,
    LogitMetric,
    SlowMetricWarning,
    as_metric,
    logit_diff,
    logit_of,
)
from common.interp.results import PatchingComparison, PatchingResult, compare_patching
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
from common.interp.views import (
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
from common.labelled import Labelled
from common.models.activation_cache import ActivationCache, get_act_name, parse_act_name
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
    "LensConfig",
    "LogitMetric",
    "Patch",
    "PatchingComparison",
    "PatchingResult",
    "SlowMetricWarning",
    "ablation_attribution",
    "activation_patching",
    "as_metric",
    "attribution_patching",
    "b_O",
    "compare_patching",
    "direct_logit_attribution",
    "effective_embedding",
    "final_norm_linear",
    "forward",
    "get_act_name",
    "head_ablation_sweep",
    "lens_config",
    "logit_diff",
    "logit_of",
    "make_patch",
    "metric_value",
    "parse_act_name",
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
