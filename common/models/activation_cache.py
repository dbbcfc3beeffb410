"""``ActivationCache``: captured site values per layer, with labelled axes.

``cache["z", 3]`` is layer 3's ``z [batch, pos, head, d_head]`` (the array itself, as in
TransformerLens; ``cache.labelled("z", 3)`` names its axes); ``cache.axes("z")`` names its
axes; ``cache["z"]`` (or ``cache.stack("z")``) is a :class:`~common.labelled.Labelled`
``[layer, batch, pos, head, d_head]`` over the captured layers. TransformerLens hook names work
too: ``cache["blocks.3.attn.hook_z"]``, ``cache[get_act_name("z", 3)]``.

The final norm's scale (``ln_final_scale``, TL's ``ln_final.hook_scale``) belongs to no block:
it is stored at layer ``n_layers``, and ``cache["ln_final_scale"]`` is its one value
``[batch, pos]`` (labelled; no layer axis); ``cache["ln_final.hook_scale"]`` the array.

Layer indices: a negative layer counts back from the model's layer count (``cache["z", -1]``
is the model's last layer, and a ``KeyError`` if that layer was not captured); a cache built
by hand without ``n_layers`` counts back from the last captured layer. The cache is a JAX
pytree, so it can be returned from and passed into jitted functions (mean ablation and
patching read it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from common.attention.hooks import SITE_AXES, SITE_TABLE
from common.labelled import Labelled

# Our site name -> TransformerLens hook name (``{}`` is the layer; final sites have none).
TL_HOOKS: dict[str, str] = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "ln1_scale": "blocks.{}.ln1.hook_scale",
    "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k",
    "v": "blocks.{}.attn.hook_v",
    "rot_q": "blocks.{}.attn.hook_rot_q",
    "rot_k": "blocks.{}.attn.hook_rot_k",
    "attn_scores": "blocks.{}.attn.hook_attn_scores",
    "pattern": "blocks.{}.attn.hook_pattern",
    "z": "blocks.{}.attn.hook_z",
    "head_out": "blocks.{}.attn.hook_result",
    "attn_out": "blocks.{}.hook_attn_out",
    "resid_mid": "blocks.{}.hook_resid_mid",
    "ln2_scale": "blocks.{}.ln2.hook_scale",
    "mlp_pre": "blocks.{}.mlp.hook_pre",
    "mlp_post": "blocks.{}.mlp.hook_post",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "resid_post": "blocks.{}.hook_resid_post",
    "ln_final_scale": "ln_final.hook_scale",
}
_FROM_TL = {template: site for site, template in TL_HOOKS.items()}
# TransformerLens' short names and aliases -> our site names.
_ALIASES = {"result": "head_out", "attn": "pattern", "query": "q", "key": "k", "value": "v",
            "scores": "attn_scores", "pre": "mlp_pre", "post": "mlp_post"}
# The norm a short "scale" belongs to (TransformerLens' layer_type) -> our site name.
_SCALES = {"ln1": "ln1_scale", "ln2": "ln2_scale", "ln_final": "ln_final_scale"}
_TL_NAME = re.compile(r"^blocks\.(-?\d+)\.(?:(?:attn|mlp|ln1|ln2)\.)?hook_(\w+)$")
_NOT_HERE = ("embed", "pos_embed", "normalized", "pre_linear", "mid", "tokens")


def site_name(name: str) -> str:
    """Our site name for a site or TransformerLens short name (``"result"`` -> ``"head_out"``)."""
    name = _ALIASES.get(name, name)
    if name == "scale":
        raise KeyError("'scale' is ambiguous: say which norm, 'ln1_scale', 'ln2_scale' or "
                       "'ln_final_scale' (get_act_name('scale', layer, 'ln1') works too)")
    if name not in SITE_AXES:
        extra = (" (TransformerLens' embeddings, normalized outputs and pre_linear are not sites "
                 "here)" if name in _NOT_HERE else "")
        raise KeyError(f"unknown site {name!r}{extra}; known sites: {tuple(SITE_AXES)} "
                       f"(TransformerLens names: {', '.join(sorted(_ALIASES))} too)")
    return name


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """TransformerLens' hook name of a site at a layer: ``get_act_name("z", 3)`` ->
    ``"blocks.3.attn.hook_z"``; our site names and TL's (``"result"``, ``"attn"``, ``"pre"``,
    ``"post"``, ``"scores"``) both work. Norm scales as in TL: ``get_act_name("scale", 3,
    "ln1")`` -> ``"blocks.3.ln1.hook_scale"``, ``get_act_name("scale")`` (or
    ``"ln_final_scale"``) -> ``"ln_final.hook_scale"``. ``cache[get_act_name("z", 3)]`` is
    ``cache["z", 3]``."""
    if name == "scale":
        if layer_type is None and layer is None:
            layer_type = "ln_final"
        if layer_type not in _SCALES:
            raise KeyError(f"get_act_name('scale', {layer!r}, {layer_type!r}): 'scale' is "
                           f"ambiguous; layer_type must be one of {tuple(_SCALES)}")
        name = _SCALES[layer_type]
    site = site_name(name)
    if SITE_TABLE[site].final:
        if layer is not None:
            raise ValueError(f"get_act_name({name!r}): the final norm belongs to no layer; "
                             "leave the layer out")
        return TL_HOOKS[site]
    if layer is None:
        raise ValueError(f"get_act_name({name!r}): every site but the final norm's is per layer; "
                         "pass the layer")
    return TL_HOOKS[site].format(int(layer))


def parse_act_name(hook: str) -> tuple[str, int | None]:
    """``"blocks.3.attn.hook_z"`` -> ``("z", 3)`` (the inverse of :func:`get_act_name`);
    ``"ln_final.hook_scale"`` -> ``("ln_final_scale", None)`` (a final site: no layer)."""
    if hook in _FROM_TL:
        return _FROM_TL[hook], None
    m = re.match(r"^blocks\.(-?\d+)\.(.+)$", hook)
    if m is not None and "blocks.{}." + m.group(2) in _FROM_TL:
        return _FROM_TL["blocks.{}." + m.group(2)], int(m.group(1))
    m = _TL_NAME.match(hook)
    if m is None:
        raise KeyError(f"{hook!r} is neither a site name {tuple(SITE_AXES)} nor a "
                       "TransformerLens hook name like 'blocks.3.attn.hook_z'")
    layer, short = int(m.group(1)), m.group(2)
    site = site_name(short)
    raise KeyError(f"{hook!r}: TransformerLens calls this site "
                   f"{get_act_name(site, None if SITE_TABLE[site].final else layer)!r}")


@jax.tree_util.register_pytree_node_class
class ActivationCache:
    """Site values keyed by ``(site, layer)``.

    Attributes:
      data: ``{(site, layer): array}``; shapes as in ``common.attention.hooks``.
      n_layers: the model's layer count (negative layers count back from it), or None.
    """

    def __init__(self, data: dict[tuple[str, int], jax.Array], n_layers: int | None = None):
        self.data = dict(data)
        self.n_layers = n_layers

    def tree_flatten(self):
        keys = tuple(sorted(self.data))
        return tuple(self.data[k] for k in keys), (keys, self.n_layers)

    @classmethod
    def tree_unflatten(cls, aux, children):
        keys, n_layers = aux
        return cls(dict(zip(keys, children, strict=True)), n_layers)

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
            if key.startswith("blocks.") or key in _FROM_TL:
                try:
                    key = parse_act_name(key)
                except KeyError:
                    return False
            else:
                return _ALIASES.get(key, key) in self.sites
        try:
            site, layer = key
            return (site_name(site), self._layer(site_name(site), layer, check=False)) in self.data
        except (KeyError, ValueError, TypeError):
            return False

    @property
    def sites(self) -> tuple[str, ...]:
        """The captured site names."""
        return tuple(sorted({s for s, _ in self.data}))

    def layers(self, site: str) -> tuple[int, ...]:
        """The layers at which ``site`` was captured."""
        site = site_name(site) if site not in SITE_AXES else site
        out = tuple(sorted(layer for s, layer in self.data if s == site))
        if not out:
            raise KeyError(f"site {site!r} was not captured; the cache holds {self.sites} "
                           "(pass it in names_filter)")
        return out

    @staticmethod
    def axes(site: str) -> tuple[str, ...]:
        """Axis names of one layer's value of ``site``."""
        return SITE_AXES[site_name(site)]

    def _layer(self, site: str, layer, check: bool = True) -> int:
        """A layer index with negative ones resolved (module docstring rule); None for a final
        site is its one layer (``n_layers``)."""
        if layer is None and SITE_TABLE[site].final:
            if self.n_layers is not None:
                return self.n_layers
            held = tuple(sorted(x for s, x in self.data if s == site))
            return held[-1] if held else -1
        if isinstance(layer, bool) or not hasattr(layer, "__index__"):
            raise TypeError(f"cache[{site!r}, {layer!r}]: the layer must be an int")
        layer = int(layer)
        if layer >= 0:
            return layer
        if self.n_layers is not None:
            if layer < -self.n_layers:
                raise KeyError(f"layer {layer} out of range for a model of {self.n_layers} "
                               "layers")
            return self.n_layers + layer
        held = self.layers(site) if check else tuple(
            sorted(x for s, x in self.data if s == site))
        if not held:
            raise KeyError(f"site {site!r} was not captured")
        return held[-1] + 1 + layer

    def __getitem__(self, key):
        if isinstance(key, str):
            if key.startswith("blocks.") or key in _FROM_TL:
                return self[parse_act_name(key)]
            if key in SITE_TABLE and SITE_TABLE[key].final:
                return self.labelled(key, None)  # one value, no layer axis
            return self.stack(key)
        site, layer = key
        site = site_name(site)
        want = self._layer(site, layer)
        if (site, want) not in self.data:
            if site in self.sites:
                neg = f" ({layer} is layer {want})" if want != layer else ""
                raise KeyError(f"site {site!r} was captured at layers {self.layers(site)}, "
                               f"not at layer {want}{neg}")
            self.layers(site)  # raises the "not captured" error
        return self.data[(site, want)]

    def labelled(self, site: str, layer: int | None) -> Labelled:
        """Layer ``layer``'s value of ``site`` with its axis names (None: a final site's)."""
        return Labelled(self[site, layer], self.axes(site))

    def stack(self, site: str, layers=None) -> Labelled:
        """``[layer, ...]`` stack of ``site`` over ``layers`` (default: every captured layer);
        the ``layer`` axis carries the layers as coordinates (``stack[23]`` is layer 23)."""
        site = site_name(site)
        layers = self.layers(site) if layers is None else tuple(
            self._layer(site, x) for x in layers)
        vals = jnp.stack([self[site, layer] for layer in layers])
        extents = {} if self.n_layers is None else {"layer": self.n_layers}
        return Labelled(vals, ("layer",) + self.axes(site), {"layer": layers}, extents)

    def apply(self, fn) -> ActivationCache:
        """A new cache with ``fn`` applied to every array (e.g. ``np.asarray``)."""
        return ActivationCache({k: fn(v) for k, v in self.data.items()}, self.n_layers)
