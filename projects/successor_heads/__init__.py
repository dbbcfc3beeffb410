"""Successor heads (Gould et al., 2023/2024): attention heads that increment ordinal tokens."""

DESCRIPTION = (
    "Gould et al. 2023, 'Successor Heads': succession scores of every head of an LM (weights "
    "only), mod-10 SAE features, vector arithmetic, in-context succession by DLA and patching"
)
