"""``ActivationCache``: captured site values per layer, with labelled axes.

``cache["z", 3]`` is layer 3's ``z [batch, pos, head, d_head]`` (a bare array);
``cache.axes("z")`` names its axes; ``cache["z"]`` (or ``cache.stack("z")``) is a
:class:`~common.labelled.Labelled` ``[layer, batch, pos, head, d_head]`` over the
captured layers. The cache is a JAX pytree, so it can be returned from and passed into
jitted functions (mean ablation and patching read it).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp

from common.attention.hooks import SITE_AXES
from common.labelled import Labelled


@jax.tree_util.register_pytree_node_class
class ActivationCache:
    """Site values keyed by ``(site, layer)``.

    Attributes:
      data: ``{(site, layer): array}``; shapes as in ``common.attention.hooks``.
    """

    def __init__(self, data: dict[tuple[str, int], jax.Array]):
        self.data = dict(data)

    def tree_flatten(self):
        keys = tuple(sorted(self.data))
        return tuple(self.data[k] for k in keys), keys

    @classmethod
    def tree_unflatten(cls, keys, children):
        return cls(dict(zip(keys, children, strict=True)))

    def __repr__(self) -> str:
        parts = []
        for site in self.sites:
            layers = self.layers(site)
            shape = tuple(self.data[(site, layers[0])].shape)
            parts.append(f"{site}{list(layers)}: {dict(zip(SITE_AXES[site], shape, strict=True))}")
        return "ActivationCache(" + "; ".join(parts) + ")"

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(sorted(self.data))

    def __contains__(self, key) -> bool:
        if isinstance(key, str):
            return key in self.sites
        return tuple(key) in self.data

    @property
    def sites(self) -> tuple[str, ...]:
        """The captured site names."""
        return tuple(sorted({s for s, _ in self.data}))

    def layers(self, site: str) -> tuple[int, ...]:
        """The layers at which ``site`` was captured."""
        out = tuple(sorted(layer for s, layer in self.data if s == site))
        if not out:
            raise KeyError(f"site {site!r} was not captured; the cache holds {self.sites} "
                           "(pass it in names_filter)")
        return out

    @staticmethod
    def axes(site: str) -> tuple[str, ...]:
        """Axis names of one layer's value of ``site``."""
        if site not in SITE_AXES:
            raise KeyError(f"unknown site {site!r}; known sites: {tuple(SITE_AXES)}")
        return SITE_AXES[site]

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.stack(key)
        site, layer = key
        if (site, layer) not in self.data:
            if site in self.sites:
                raise KeyError(f"site {site!r} was captured at layers {self.layers(site)}, "
                               f"not at layer {layer}")
            self.layers(site)  # raises the "not captured" error
        return self.data[(site, layer)]

    def labelled(self, site: str, layer: int) -> Labelled:
        """Layer ``layer``'s value of ``site`` with its axis names."""
        return Labelled(self[site, layer], self.axes(site))

    def stack(self, site: str, layers=None) -> Labelled:
        """``[layer, ...]`` stack of ``site`` over ``layers`` (default: every captured layer)."""
        layers = self.layers(site) if layers is None else tuple(layers)
        vals = jnp.stack([self[site, layer] for layer in layers])
        return Labelled(vals, ("layer",) + self.axes(site), {"layer": layers})

    def apply(self, fn) -> ActivationCache:
        """A new cache with ``fn`` applied to every array (e.g. ``np.asarray``)."""
        return ActivationCache({k: fn(v) for k, v in self.data.items()})
