"""Configs of the successor_heads project (Gould et al. 2023/2024).

Full run (SmolLM2-135M-Instruct; all embedding modes, in-context DLA and patching on every
class, 24 SAEs; about 10 minutes on 2 CPU cores):

    headlab run successor_heads

Quick CPU run (same scan; patching on four classes, 6 SAEs; about 5 minutes on 2 cores):

    headlab run successor_heads --quick

Another model: ``--set model=/path/to/gpt2-folder`` (a Hugging Face folder or .gguf file);
sharded over a mesh (a pod slice, a multi-GPU node): ``--set mesh=fsdp=4,tensor=4``.
"""

from __future__ import annotations

import ml_collections

from common.configs import ConfigError
from projects.successor_heads.succession import EMBED_MODES
from projects.successor_heads.tasks import CLASSES, DEFAULT_CLASSES, HELD_OUT


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None / ``"full"`` for the full run, ``"quick"`` for the small CPU run."""
    if arg not in (None, "", "full", "quick"):
        raise ValueError(f"successor_heads get_config: unknown argument {arg!r} (use 'quick')")
    c = ml_collections.ConfigDict()
    c.model = "smollm2-135m-instruct"  # a known name, a .gguf file or a Hugging Face folder
    c.mesh = ""  # "" = one device; "fsdp=4,tensor=4" loads the model sharded over a mesh
    # ---- succession scan (§2-§4) ----
    c.classes = tuple(DEFAULT_CLASSES)
    c.bare = ("numbers",)  # classes also scored without the leading space ("5")
    c.held_out = tuple(HELD_OUT)  # scored, kept out of the pooled score
    c.embed_mode = "mlp0_only"  # mlp0_only | resid_plus_mlp0 | raw_embed | block0
    c.embed_fallback = ""  # for a model without an MLP in layer 0: "" = error, or "raw_embed"
    c.final_norm = True  # the final norm before W_U (issue 14; the derivative has none)
    c.compare_modes = True  # also scan every embed_mode x final_norm (seconds)
    c.threshold = 0.4  # a "successor head" scores above this (the derivative's bar)
    c.top_k = 10
    # ---- in-context succession (§12) ----
    c.incontext = ml_collections.ConfigDict()
    c.incontext.enabled = True
    c.incontext.n_items = 4
    c.incontext.max_prompts = 16
    c.incontext.patch = True
    c.incontext.patch_prompts = 8
    c.incontext.patch_classes = ()  # () = every class with kept prompts
    # ---- mod-10 SAE features (§7) ----
    c.mod10 = ml_collections.ConfigDict()
    c.mod10.enabled = True
    c.mod10.dict_mult = 1.0  # dictionary size / d_model
    c.mod10.l1 = (1.0, 3.0, 10.0)
    c.mod10.seeds = tuple(range(8))
    c.mod10.steps = 1500
    c.mod10.lr = 3e-3
    c.mod10.tied = False
    c.mod10.max_number = 500
    # ---- vector arithmetic (§8) ----
    c.arithmetic = ml_collections.ConfigDict()
    c.arithmetic.enabled = True
    c.arithmetic.ks = (1.0, 2.0, 4.0)
    c.arithmetic.n_items = 3
    c.arithmetic.layer = 1  # edit the residual stream entering this layer
    # ---- a tiny model trained on synthetic ordinal lists: the positive case (§13) ----
    c.toy = ml_collections.ConfigDict()
    c.toy.enabled = True
    c.toy.steps = 1500
    c.toy.d_model = 64
    c.toy.n_layers = 2
    c.toy.lr = 3e-3
    # ---- the top in-context head on natural text (paper §4, in small) ----
    c.natural = ml_collections.ConfigDict()
    c.natural.enabled = True
    c.natural.n_texts = 300  # AG News test texts from $HEADLAB_DATA
    c.natural.seq = 48
    c.natural.top_frac = 0.1
    c.seed = 0
    if arg == "quick":
        c.natural.n_texts = 100
        c.incontext.max_prompts = 8
        c.incontext.patch_prompts = 6
        c.incontext.patch_classes = ("number_words", "ordinal_words", "days", "months")
        c.mod10.seeds = (0, 1)
        c.mod10.steps = 750
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise :class:`ConfigError` naming the first impossible field."""
    from common.sharding.mesh import check_mesh_field

    check_mesh_field(c.mesh)
    unknown = [n for n in (*c.classes, *c.bare, *c.held_out) if n not in CLASSES]
    if unknown:
        raise ConfigError(f"config.classes/bare/held_out: unknown class(es) {unknown}; known: "
                          f"{list(CLASSES)}")
    if not c.classes:
        raise ConfigError("config.classes must name at least one ordinal class")
    if c.embed_mode not in EMBED_MODES:
        raise ConfigError(f"config.embed_mode must be one of {EMBED_MODES}, got {c.embed_mode!r}")
    if c.embed_fallback not in ("", *EMBED_MODES):
        raise ConfigError(f"config.embed_fallback must be '' or one of {EMBED_MODES}")
    if not 0 < c.threshold <= 1:
        raise ConfigError(f"config.threshold must be in (0, 1], got {c.threshold}")
    if c.top_k < 1:
        raise ConfigError(f"config.top_k must be >= 1, got {c.top_k}")
    if c.incontext.n_items < 3:
        raise ConfigError("config.incontext.n_items must be >= 3")
    if c.incontext.max_prompts < 1 or c.incontext.patch_prompts < 1:
        raise ConfigError("config.incontext.max_prompts and patch_prompts must be >= 1")
    m = c.mod10
    if m.dict_mult <= 0 or not m.l1 or min(m.l1) < 0 or not m.seeds:
        raise ConfigError("config.mod10: dict_mult > 0, l1 >= 0 (at least one) and seeds needed")
    if m.steps < 1 or m.lr <= 0:
        raise ConfigError("config.mod10.steps must be >= 1 and lr > 0")
    if m.steps > 250 and m.steps % 250:
        raise ConfigError("config.mod10.steps must be a multiple of 250 (the logging interval)")
    if c.natural.n_texts < 1 or c.natural.seq < 2 or not 0 < c.natural.top_frac <= 1:
        raise ConfigError("config.natural: n_texts >= 1, seq >= 2, 0 < top_frac <= 1")
    if c.toy.steps < 1 or (c.toy.steps > 100 and c.toy.steps % 100):
        raise ConfigError("config.toy.steps must be >= 1 and a multiple of 100 above 100")
    if not c.arithmetic.ks or c.arithmetic.layer < 1:
        raise ConfigError("config.arithmetic: ks must be non-empty and layer >= 1")
