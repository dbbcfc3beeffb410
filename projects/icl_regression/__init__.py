"""In-context linear regression with multi-head softmax attention (He et al., 2025)."""

DESCRIPTION = (
    "He et al. 2025, 'In-Context Linear Regression Demystified': one-layer multi-head softmax "
    "attention learns debiased GD; patterns, estimator curves and theory plots"
)
