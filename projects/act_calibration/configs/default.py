"""Configs of the act_calibration project (Yu et al. 2024, ACT).

Full run (SmolLM2-135M-Instruct; head search over all 243 heads of layers 2..28 on 24
zero-shot prompts, six datasets x 32 test prompts x three seeds, 2-shot; see the README for its
measured time on 2 CPU cores):

    headlab run act_calibration

Quick CPU run (search over five layers, three short-prompt datasets x 24 test prompts, two
seeds; see the README for its measured time):

    headlab run act_calibration --quick

Options: ``--set beta=0.3``, ``--set threshold=0.15``, ``--set criterion=alpha_over_n``
(then ``threshold`` is α), ``--set layers=4,20`` (first and last layer ACT may edit),
``--set model=/path/to/model.gguf``.
"""

from __future__ import annotations

import ml_collections

from common.attention.act import CRITERIA
from common.configs import ConfigError
from projects.act_calibration.data import DATASETS, split


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None / ``"full"`` for the full run, ``"quick"`` for the small CPU run."""
    if arg not in (None, "", "full", "quick"):
        raise ConfigError(f"act_calibration get_config: unknown argument {arg!r} (use 'quick')")
    c = ml_collections.ConfigDict()
    c.model = "smollm2-135m-instruct"  # a known name, a .gguf file or a Hugging Face folder
    c.mesh = ""  # "" = one device; "fsdp=4,tensor=4" loads the model sharded over a mesh
    # ---- the calibration (papers/act_calibration.md §3-§4) ----
    c.beta = 0.4
    c.threshold = 0.1  # τ (abs_colmean) or α (alpha_over_n)
    c.criterion = "abs_colmean"
    c.layers = (2, -2)  # first and last layer ACT may edit; negative counts from the end
    # ---- data ----
    c.datasets = ("sst2", "sst5", "mr", "trec", "agnews", "cb")
    c.n_demo_pool = 32  # few-shot demonstration pool per dataset
    c.n_calib = 4  # head-search examples per dataset
    c.n_test = 32  # test examples per dataset (a cap; CB has 56)
    c.max_words = 30  # each text field clipped to this many words
    c.split_seed = 0
    # ---- head search ----
    c.search = ml_collections.ConfigDict()
    c.search.layer_stride = 1  # search every k-th layer of the range
    c.search.shots = 0  # demonstrations in the search prompts (the released search: zero-shot)
    c.search.min_gain = 0.0  # keep heads whose accuracy beats the baseline by more than this
    c.search.cached = True  # layer-prefix caching
    # ---- evaluation ----
    c.shots = 2
    c.seeds = (0, 1, 2)
    c.batch_tokens = 2048
    # ---- sink statistics ----
    c.sinks = ml_collections.ConfigDict()
    c.sinks.prompts_per_dataset = 3
    c.seed = 0
    if arg == "quick":  # short prompts only (no CB / AG News), five searched layers
        c.datasets = ("sst2", "sst5", "trec")
        c.n_calib = 6
        c.n_test = 24
        c.search.layer_stride = 6
        c.seeds = (0, 1)
        c.sinks.prompts_per_dataset = 2
    return c


def layer_range(c: ml_collections.ConfigDict, n_layers: int) -> tuple[int, ...]:
    """The layers ACT may edit, from ``c.layers = (first, last)`` (negative from the end)."""
    try:
        first, last = (int(x) for x in c.layers)
    except (TypeError, ValueError):
        raise ConfigError(f"config.layers must be (first, last), got {c.layers!r}") from None
    first, last = first % n_layers if first < 0 else first, last % n_layers if last < 0 else last
    if not 0 <= first <= last < n_layers:
        raise ConfigError(f"config.layers {tuple(c.layers)}: need 0 <= first <= last < "
                          f"{n_layers} (the model's layers)")
    return tuple(range(first, last + 1))


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise :class:`ConfigError` naming the first impossible field, or the data's
    :class:`~projects.act_calibration.data.ACTDataError` / ``FileNotFoundError`` for a bad or
    missing dataset file (``headlab run`` calls this before making the run directory)."""
    from common.sharding.mesh import check_mesh_field

    check_mesh_field(c.mesh)
    unknown = [d for d in c.datasets if d not in DATASETS]
    if unknown or not c.datasets:
        raise ConfigError(f"config.datasets: unknown dataset(s) {unknown}; shipped: "
                          f"{list(DATASETS)}")
    if c.criterion not in CRITERIA:
        raise ConfigError(f"config.criterion must be one of {CRITERIA}, got {c.criterion!r}")
    if not 0.0 <= c.beta <= 1.0:
        raise ConfigError(f"config.beta must be in [0, 1], got {c.beta}")
    if c.threshold <= 0:
        raise ConfigError(f"config.threshold must be > 0, got {c.threshold}")
    if c.shots < 0 or c.search.shots < 0 or c.shots > c.n_demo_pool:
        raise ConfigError(f"config.shots must be in [0, n_demo_pool = {c.n_demo_pool}]")
    if c.n_calib < 1 or c.n_test < 1:
        raise ConfigError("config.n_calib and n_test must be >= 1")
    if not c.seeds:
        raise ConfigError("config.seeds must name at least one seed")
    if c.search.layer_stride < 1:
        raise ConfigError("config.search.layer_stride must be >= 1")
    for name in c.datasets:  # every record checked now: a bad file leaves no run directory
        split(name, n_demo_pool=c.n_demo_pool, n_calib=c.n_calib, n_test=c.n_test,
              seed=c.split_seed)
