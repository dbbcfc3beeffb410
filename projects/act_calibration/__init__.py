"""ACT (Yu et al., ICML 2024): hidden attention sinks and the Attention Calibration Technique."""

DESCRIPTION = (
    "Yu et al. 2024, 'Unveiling and Harnessing Hidden Attention Sinks' (ACT): sink statistics, "
    "per-head calibration search with layer-prefix caching, few-shot classification vanilla vs ACT"
)
