"""Configs of the pine project (Wang et al., 2024: position-invariant inference).

Full run (SmolLM2-135M-Instruct; judge on 40 items, retrieval with 6 items per k, each at every
gold position, timing at ~384 tokens; the README states its measured time):

    headlab run pine

Quick CPU run (16 judge items, 2 retrieval items per k, timing at ~256 tokens; under 10
minutes on 2 cores):

    headlab run pine --quick
"""

from __future__ import annotations

import ml_collections

from common.configs import ConfigError
from projects.pine.method import METHODS


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None / ``"full"`` for the full run, ``"quick"`` for the small CPU run."""
    if arg not in (None, "", "full", "quick"):
        raise ConfigError(f"pine get_config: unknown argument {arg!r} (use 'quick')")
    c = ml_collections.ConfigDict()
    c.model = "smollm2-135m-instruct"  # a known name, a .gguf file or a Hugging Face folder
    c.mesh = ""  # "" = one device; "fsdp=4,tensor=4" loads the model sharded over a mesh
    c.methods = tuple(METHODS)
    c.seed = 0
    c.judge = ml_collections.ConfigDict()
    c.judge.n_items = 40
    c.judge.batch = 16
    c.retrieval = ml_collections.ConfigDict()
    c.retrieval.ks = (3, 5, 10)
    c.retrieval.n_items = 6  # items per k; each is scored with the gold at every position
    c.retrieval.batch = 10
    c.timing = ml_collections.ConfigDict()
    c.timing.ks = (2, 5, 10)
    c.timing.tokens = 384
    c.timing.rounds = 3
    if arg == "quick":
        c.judge.n_items = 16
        c.retrieval.n_items = 2
        c.timing.tokens = 256
        c.timing.rounds = 2
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise :class:`ConfigError` naming the first impossible field."""
    from common.sharding.mesh import check_mesh_field

    check_mesh_field(c.mesh)
    bad = [m for m in c.methods if m not in METHODS]
    if bad or not c.methods:
        raise ConfigError(f"config.methods: unknown {bad} (known: {', '.join(METHODS)})")
    if "vanilla" not in c.methods or "pine" not in c.methods:
        raise ConfigError("config.methods must include 'vanilla' and 'pine' (the headline pair)")
    if c.judge.n_items < 1 or c.judge.batch < 1:
        raise ConfigError("config.judge: n_items and batch must be >= 1")
    if not c.retrieval.ks or any(not 2 <= k <= 10 for k in c.retrieval.ks):
        raise ConfigError(f"config.retrieval.ks: each k in 2..10 (distinct first digits of the "
                          f"codes), got {tuple(c.retrieval.ks)}")
    if c.retrieval.n_items < 1 or c.retrieval.batch < 1:
        raise ConfigError("config.retrieval: n_items and batch must be >= 1")
    if not c.timing.ks or any(k < 1 for k in c.timing.ks):
        raise ConfigError("config.timing.ks: at least one k >= 1")
    if c.timing.tokens < 40 + 2 * max(c.timing.ks) or c.timing.rounds < 1:
        raise ConfigError(f"config.timing: tokens must leave room for 40 prompt tokens and "
                          f"k segments (>= {40 + 2 * max(c.timing.ks)}), rounds >= 1")
