"""headlab's shared library: the per-head attention core, models, interpretability, training.

Importing it changes no global state (environment, XLA flags, JAX config); the programs that own
their process opt in to CPU flags through :mod:`common.xla_flags`.
"""
