"""From a config to the models trained together: validation and the bucket layout.

A *bucket* is a set of models of one shape (task, ``H``, attention kind) stacked on a leading
model axis and trained with ``vmap``; all buckets step together inside one compiled program.
"""

from __future__ import annotations

import ast
import dataclasses
import functools

import ml_collections
import numpy as np

from projects.icl_regression import data, model

BACKENDS = ("auto", "reference", "cpu", "xla")  # of common.attention.backends.BACKENDS


@dataclasses.dataclass(frozen=True)
class Bucket:
    """Static description of models trained together under ``vmap``.

    Attributes:
      name: bucket name, e.g. ``H2``, ``noniso_H2``, ``mt_H3``, ``lin_H1``, ``act_tanh_H2``.
      kind: ``single`` (the main experiment), ``noniso``, ``multitask``, ``linear`` or
        ``activation``.
      d: covariate dimension.
      heads: number of heads ``H``.
      attention: ``softmax``, ``linear`` or ``act:<f>`` (exp replaced by ``model.ACTIVATIONS[f]``).
      task_masks: ``N`` feature subsets as 0/1 tuples of length ``d``, or None (one task).
      seeds: one seed per model on the model axis.
      cov: ``[d, d]`` covariance as nested tuples, or None for ``I_d``.
      norm_length: linear attention's hard-coded ``1/L₀`` (the training length), else None.
      act_c: the constant ``C`` of an ``act:`` attention.
    """

    name: str
    kind: str
    d: int
    heads: int
    attention: str
    task_masks: tuple[tuple[float, ...], ...] | None
    seeds: tuple[int, ...]
    cov: tuple[tuple[float, ...], ...] | None
    norm_length: int | None = None
    act_c: float = 1.0

    def forward(self):
        """The model's forward ``(params, context, query, *, backend, kv_valid) -> ŷ [b, N]``."""
        if self.attention == "linear":
            return functools.partial(model.forward_linear, norm_length=self.norm_length)
        if self.attention.startswith("act:"):
            return functools.partial(model.forward_activation,
                                     activation=self.attention[4:], c=self.act_c)
        return model.forward

    @property
    def n_tasks(self) -> int:
        return 1 if self.task_masks is None else len(self.task_masks)

    @property
    def width(self) -> int:
        """Token width ``D = d + N``."""
        return self.d + self.n_tasks

    @property
    def model_names(self) -> list[str]:
        return [f"{self.name}_s{s}" for s in self.seeds]

    def cov_array(self) -> np.ndarray | None:
        return None if self.cov is None else np.asarray(self.cov, np.float64)

    def masks_array(self) -> np.ndarray | None:
        return None if self.task_masks is None else np.asarray(self.task_masks, np.float32)


def parse_covariance(value, d: int, field: str) -> np.ndarray | None:
    """``"identity"`` -> None; ``"toeplitz:RHO"`` -> ``ρ^{|i-j|}``; a nested list -> that matrix.

    Raises ``ValueError`` naming ``field`` for a wrong shape, a non-symmetric or non-PSD matrix.
    """
    if isinstance(value, str) and value.lstrip().startswith("["):  # a matrix given via --set
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"{field}: cannot parse the matrix {value!r}") from e
    if isinstance(value, str):
        if value == "identity":
            return None
        if value.startswith("toeplitz:"):
            try:
                rho = float(value.split(":", 1)[1])
            except ValueError as e:
                raise ValueError(f"{field}: cannot parse rho in {value!r}") from e
            cov = data.toeplitz_covariance(d, rho)
        else:
            raise ValueError(
                f"{field} must be 'identity', 'toeplitz:RHO' or a [d, d] matrix, got {value!r}"
            )
    else:
        cov = np.asarray(value, np.float64)
        if cov.shape != (d, d):
            raise ValueError(f"{field} must be [{d}, {d}] for d = {d}, got shape {cov.shape}")
    data.covariance_sqrt(cov, field)  # raises on non-symmetric / non-PSD
    return cov


def _tuple(cov: np.ndarray | None):
    return None if cov is None else tuple(tuple(float(v) for v in row) for row in cov)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"config.{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _heads(name: str, value) -> tuple[int, ...]:
    values = (value,) if isinstance(value, int) else tuple(value)
    if not values:
        raise ValueError(f"config.{name} must name at least one head count")
    for h in values:
        if isinstance(h, bool) or int(h) != h or int(h) < 1:
            raise ValueError(f"config.{name}: every H must be an integer >= 1, got {h!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"config.{name} has repeated head counts: {values}")
    return tuple(int(h) for h in values)


def validate(config: ml_collections.ConfigDict) -> None:
    """Fail at once, with the field named, on unknown keys or an impossible configuration."""
    from projects.icl_regression.configs.default import get_config

    _check_keys(config.to_dict(), get_config().to_dict(), "config")
    _positive_int("d", config.d)
    _positive_int("length", config.length)
    _positive_int("batch", config.batch)
    _positive_int("steps", config.steps)
    _positive_int("log_every", config.log_every)
    _positive_int("ckpt_every", config.ckpt_every)
    if config.ckpt_every % config.log_every:
        raise ValueError(
            f"config.ckpt_every ({config.ckpt_every}) must be a multiple of config.log_every "
            f"({config.log_every}) so that a resumed run replays the same compiled chunks"
        )
    if not config.sigma2 >= 0:
        raise ValueError(f"config.sigma2 must be >= 0, got {config.sigma2!r}")
    if not config.lr > 0:
        raise ValueError(f"config.lr must be > 0, got {config.lr!r}")
    _heads("heads", config.heads)
    seeds = tuple(config.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"config.seeds must be non-empty and distinct, got {seeds}")
    if config.backend not in BACKENDS:
        raise ValueError(f"config.backend must be one of {BACKENDS}, got {config.backend!r}")
    parse_covariance(config.covariance, config.d, "config.covariance")
    if config.noniso.enabled:
        _heads("noniso.heads", config.noniso.heads)
        parse_covariance(config.noniso.covariance, config.d, "config.noniso.covariance")
    if config.multitask.enabled:
        d_mt = _positive_int("multitask.d", config.multitask.d)
        _heads("multitask.heads", config.multitask.heads)
        subsets = tuple(tuple(s) for s in config.multitask.subsets)
        if len(subsets) < 1:
            raise ValueError("config.multitask.subsets must hold at least one feature subset")
        for s in subsets:
            if not s or any(int(i) != i or not 0 <= i < d_mt for i in s) or len(set(s)) != len(s):
                raise ValueError(
                    f"config.multitask.subsets: {s} must be distinct indices in [0, {d_mt})"
                )
    if config.linear.enabled:
        _heads("linear.heads", config.linear.heads)
    if config.activation.enabled:
        _heads("activation.heads", config.activation.heads)
        fs = tuple(config.activation.functions)
        if not fs or any(f not in model.ACTIVATIONS for f in fs) or len(set(fs)) != len(fs):
            raise ValueError(f"config.activation.functions must be distinct names from "
                             f"{sorted(model.ACTIVATIONS)}, got {fs}")
        if not config.activation.c > 0:
            raise ValueError(f"config.activation.c must be > 0, got {config.activation.c!r}")
    lengths = tuple(config.eval.lengths)
    if not lengths or any(int(n) != n or n < 1 for n in lengths):
        raise ValueError(f"config.eval.lengths must be prompt lengths >= 1, got {lengths}")
    _positive_int("eval.n_test", config.eval.n_test)
    _positive_int("theory.flow_steps", config.theory.flow_steps)
    _positive_int("theory.norm_draws", config.theory.norm_draws)


def _check_keys(got: dict, ref: dict, where: str) -> None:
    unknown = sorted(set(got) - set(ref))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(ref)}")
    for k, v in got.items():
        if isinstance(v, dict) and isinstance(ref.get(k), dict):
            _check_keys(v, ref[k], f"{where}.{k}")


def buckets(config: ml_collections.ConfigDict) -> list[Bucket]:
    """The buckets a (validated) config trains, main experiment first."""
    validate(config)
    seeds = tuple(int(s) for s in config.seeds)
    cov = _tuple(parse_covariance(config.covariance, config.d, "config.covariance"))
    out = [
        Bucket(f"H{h}", "single", config.d, h, "softmax", None, seeds, cov)
        for h in _heads("heads", config.heads)
    ]
    if config.noniso.enabled:
        ncov = _tuple(parse_covariance(config.noniso.covariance, config.d, "noniso.covariance"))
        for h in _heads("noniso.heads", config.noniso.heads):
            out.append(Bucket(f"noniso_H{h}", "noniso", config.d, h, "softmax", None, seeds, ncov))
    if config.multitask.enabled:
        d_mt = int(config.multitask.d)
        masks = tuple(
            tuple(1.0 if i in set(s) else 0.0 for i in range(d_mt))
            for s in config.multitask.subsets
        )
        for h in _heads("multitask.heads", config.multitask.heads):
            out.append(Bucket(f"mt_H{h}", "multitask", d_mt, h, "softmax", masks, seeds, None))
    if config.linear.enabled:
        for h in _heads("linear.heads", config.linear.heads):
            out.append(Bucket(f"lin_H{h}", "linear", config.d, h, "linear", None, seeds, cov,
                              norm_length=int(config.length)))
    if config.activation.enabled:
        for f in config.activation.functions:
            for h in _heads("activation.heads", config.activation.heads):
                out.append(Bucket(f"act_{f}_H{h}", "activation", config.d, h, f"act:{f}", None,
                                  seeds, cov, act_c=float(config.activation.c)))
    return out
