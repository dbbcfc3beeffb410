"""Patching results on one scale, and the activation-vs-attribution comparison.

:func:`~common.interp.activation_patching` and :func:`~common.interp.attribution_patching`
both return a :class:`PatchingResult`: the change of the metric from the corrupted run,
``metric(patched) - metric(corrupted)`` (exact, or its linear estimate), optionally divided by
``metric(clean) - metric(corrupted)`` so that clean = 1 and corrupted = 0, with the two metric
values attached. For ``direction="denoise"`` (corrupted run, one clean head) 0 means the head
restores nothing and 1 (normalised) everything; for ``"noise"`` (clean run, one corrupted head)
1 means the head does not matter and 0 that corrupting it alone breaks the behaviour.

:func:`compare_patching` sets the two side by side per head, as researchers do next: Pearson and
Spearman correlation, the correlation with each layer left out (one layer's large, wrongly
estimated heads can dominate Pearson), and the heads where they disagree most.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from common.labelled import Labelled


@jax.tree_util.register_pytree_node_class
class PatchingResult(Labelled):
    """A :class:`~common.labelled.Labelled` ``[layer, head(, pos)]`` of patching effects.

    Attributes:
      values: ``metric(patched) - metric(corrupted)``, divided by ``clean - corrupted`` when
        ``normalized``.
      clean, corrupted: the metric on the clean and the corrupted prompt (scalars).
      method: ``"activation"`` (exact) or ``"attribution"`` (linear estimate).
      direction: ``"denoise"`` or ``"noise"``; site: the patched site; normalized: bool.

    Arithmetic on it gives a plain :class:`Labelled` (the metric values do not carry over).
    """

    __slots__ = ("clean", "corrupted", "method", "direction", "site", "normalized")

    @classmethod
    def of(cls, change, axes, clean, corrupted, *, method: str, direction: str, site: str,
           normalize: bool) -> PatchingResult:
        out = object.__new__(cls)
        Labelled.__init__(out, change, axes)
        out.clean, out.corrupted = clean, corrupted
        out.method, out.direction, out.site, out.normalized = method, direction, site, False
        return out.normalize() if normalize else out

    def tree_flatten(self):
        leaves, aux = super().tree_flatten()
        return leaves + (self.clean, self.corrupted), (aux, self.method, self.direction,
                                                      self.site, self.normalized)

    @classmethod
    def tree_unflatten(cls, aux, children):
        base = Labelled.tree_unflatten(aux[0], children[:1])
        out = object.__new__(cls)
        out.values, out.axes, out.coords, out.extents = (base.values, base.axes, base.coords,
                                                         base.extents)
        out.clean, out.corrupted = children[1], children[2]
        out.method, out.direction, out.site, out.normalized = aux[1:]
        return out

    @property
    def gap(self):
        """``metric(clean) - metric(corrupted)``: the normalising denominator."""
        return self.clean - self.corrupted

    def _with(self, values, normalized: bool) -> PatchingResult:
        out = PatchingResult.of(values, self.axes, self.clean, self.corrupted, method=self.method,
                                direction=self.direction, site=self.site, normalize=False)
        out.normalized = normalized
        return out

    def normalize(self) -> PatchingResult:
        """On the scale clean = 1, corrupted = 0 (a no-op when already normalised)."""
        if self.normalized:
            return self
        gap = np.asarray(self.gap)
        if np.abs(gap) < 1e-6 * max(1.0, float(np.abs(np.asarray(self.clean)))):
            raise ValueError(f"PatchingResult.normalize: the clean ({float(self.clean):.6g}) and "
                             f"corrupted ({float(self.corrupted):.6g}) metrics are equal; "
                             "there is nothing to normalise by")
        return self._with(self.values / self.gap, True)

    def unnormalize(self) -> PatchingResult:
        """Back to the change of the metric from the corrupted run."""
        return self._with(self.values * self.gap, False) if self.normalized else self

    @property
    def patched(self) -> Labelled:
        """The metric of each patched run (exact or estimated)."""
        change = self.unnormalize().values
        return Labelled(change + self.corrupted, self.axes, self.coords, self.extents)

    def __repr__(self) -> str:
        scale = "normalised (clean = 1, corrupted = 0)" if self.normalized else (
            "metric(patched) - metric(corrupted)")
        return (f"PatchingResult({self.method}, {self.direction}, site={self.site!r}, {scale}; "
                f"clean={float(self.clean):.4g}, corrupted={float(self.corrupted):.4g})\n"
                + Labelled.__repr__(self))


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (Spearman's convention)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    vals, inv = np.unique(x, return_inverse=True)
    if len(vals) < len(x):
        sums = np.bincount(inv, ranks)
        counts = np.bincount(inv)
        ranks = (sums / counts)[inv]
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@dataclasses.dataclass(frozen=True)
class PatchingComparison:
    """Exact vs estimated patching, per head (see :func:`compare_patching`).

    Attributes:
      exact, estimate: the two results (same axes, same scale).
      difference: ``estimate - exact``, labelled like them.
      pearson, spearman: correlations over every entry.
      pearson_without_layer: ``Labelled [layer]``: Pearson with that layer left out.
      flagged: the ``k`` entries with the largest ``|estimate - exact|``, as
        ``[((layer, head, ...), exact, estimate), ...]``.
    """

    exact: Labelled
    estimate: Labelled
    difference: Labelled
    pearson: float
    spearman: float
    pearson_without_layer: Labelled
    flagged: list

    @property
    def worst_layer(self) -> int:
        """The layer whose removal raises Pearson most."""
        vals = np.nan_to_num(np.asarray(self.pearson_without_layer.values), nan=-np.inf)
        return self.pearson_without_layer.labels("layer")[int(np.argmax(vals))]

    def __str__(self) -> str:
        wl = self.worst_layer
        lines = [f"activation vs attribution patching over {self.exact.size} entries: "
                 f"Pearson {self.pearson:.3f}, Spearman {self.spearman:.3f}; without layer {wl} "
                 f"Pearson {float(self.pearson_without_layer.sel(layer=wl)):.3f}",
                 "largest disagreements (exact -> estimate):"]
        for where, ex, est in self.flagged:
            name = "".join(f"{a[0].upper()}{c}" for a, c in zip(self.exact.axes, where,
                                                                 strict=True))
            lines.append(f"  {name}: {ex:+.4f} -> {est:+.4f}")
        return "\n".join(lines)


def compare_patching(exact: Labelled, estimate: Labelled, k: int = 5) -> PatchingComparison:
    """Per-head activation (``exact``) vs attribution (``estimate``) patching, both from the same
    clean/corrupted pair and metric: correlations, the correlation without each layer, and the
    ``k`` heads where the two disagree most.

    Both must have the same axes; two :class:`PatchingResult` must also share the direction and
    the scale (normalise both or neither).
    """
    if exact.axes != estimate.axes or exact.shape != estimate.shape:
        raise ValueError(f"compare_patching: exact {exact.axes} {exact.shape} and estimate "
                         f"{estimate.axes} {estimate.shape} differ")
    if isinstance(exact, PatchingResult) and isinstance(estimate, PatchingResult):
        for field in ("direction", "normalized", "site"):
            if getattr(exact, field) != getattr(estimate, field):
                raise ValueError(f"compare_patching: {field} differs ({getattr(exact, field)!r} "
                                 f"vs {getattr(estimate, field)!r}); compare like with like")
    if "layer" not in exact.axes:
        raise ValueError(f"compare_patching: expected a 'layer' axis, got {exact.axes}")
    ex = np.asarray(exact.values, np.float64)
    es = np.asarray(estimate.values, np.float64)
    la = exact.axis("layer")
    without = []
    for i in range(ex.shape[la]):
        keep = np.delete(ex, i, axis=la).ravel(), np.delete(es, i, axis=la).ravel()
        without.append(_pearson(*keep))
    diff = es - ex
    order = np.argsort(-np.abs(diff).ravel(), kind="stable")[:k]
    flagged = []
    for j in order:
        idx = np.unravel_index(j, ex.shape)
        where = tuple(exact.labels(a)[i] for a, i in zip(exact.axes, idx, strict=True))
        flagged.append((where, float(ex[idx]), float(es[idx])))
    return PatchingComparison(
        exact=exact, estimate=estimate,
        difference=Labelled(diff, exact.axes, exact.coords, exact.extents),
        pearson=_pearson(ex.ravel(), es.ravel()),
        spearman=_pearson(_rank(ex.ravel()), _rank(es.ravel())),
        pearson_without_layer=Labelled(np.asarray(without), ("layer",),
                                       {"layer": exact.labels("layer")}),
        flagged=flagged,
    )
