"""Configs of the oat project (Fang et al. 2024, OAT).

Synthetic visual search (default), the paper's architecture (d_model 512 = 256 appearance ⊕
256 position, 4 + 4 post-LN layers, 4 heads, FFN 512, a 2-head pointer), Adam 1e-4, batch 20,
clip 1.0, 100 sampled scanpaths per test trial. Not run to the end on this CPU (see README.md for
the measured step time and the estimate):

    headlab run oat

Quick CPU run (under 10 minutes on 2 cores: a reduced model, d_model 128, 2 + 2 layers, on
4 × 6 displays of 12 × 8 crops, 2,000 trials, lr 1e-3, 20 samples per trial):

    headlab run oat --quick

Real data (users with the authors' files; see README.md for the layout of ``data_dir``):

    headlab run oat --config :amazon,data_dir=/path/to/oat_data      # 6 × 14 Amazon covers
    headlab run oat --config :yogurt,data_dir=/path/to/oat_data      # own data, Q3, 3 × 9
    headlab run oat --config :wine,data_dir=/path/to/oat_data        # own data, Q1, 2 × 11

Arguments combine with ``+`` (``:amazon+quick``: the reduced model's training budget on Amazon).
"""

from __future__ import annotations

import ml_collections

from projects.oat.paper import PAPER

DATASETS = ("synthetic", "amazon", "yogurt", "wine")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg``: None / ``full``, ``quick``, a dataset name, or ``NAME+quick``."""
    parts = [p for p in (arg or "").split("+") if p and p != "full"]
    unknown = [p for p in parts if p not in (*DATASETS, "quick")]
    if unknown:
        raise ValueError(f"oat get_config: unknown argument {unknown[0]!r} (use quick, "
                         f"{', '.join(DATASETS)}, or NAME+quick)")
    quick = "quick" in parts
    dataset = next((p for p in parts if p in DATASETS), "synthetic")
    c = ml_collections.ConfigDict()
    c.dataset = dataset
    c.data_dir = ""  # real data: the folder with the authors' files (README.md)
    c.tfds_dir = ""  # where the prepared ArrayRecords go (default: <data_dir>/tfds)
    # ---- synthetic visual search (projects/oat/synthetic.py) ----
    s = c.synthetic = ml_collections.ConfigDict()
    s.rows, s.cols = 6, 14
    s.crop_h, s.crop_w = 30, 18
    s.n_colours, s.n_shapes = 4, 3
    s.cell_h, s.cell_w = 60, 40
    s.n_trials = 4000
    s.seed = 0
    s.w_sim, s.w_dist, s.w_ior, s.temperature = 3.5, 0.9, 1.2, 1.0
    s.p_refix, s.p_detect, s.p_verify = 0.15, 0.85, 0.3
    s.max_len = 24
    # ---- model (projects/oat/model.py); the paper's sizes ----
    a = PAPER["architecture"]
    m = c.model = ml_collections.ConfigDict()
    m.channels = (16, 32)
    m.kernels = (5, 3)
    m.pools = (2, 1)  # the paper's (5, 3) for 150 × 93 crops (real data)
    m.d_app, m.d_pe = a["d_app"], a["d_pe"]
    m.heads, m.d_ff = a["heads"], a["d_ff"]
    m.enc_layers, m.dec_layers = a["enc_layers"], a["dec_layers"]
    m.pointer_heads, m.dropout = a["pointer_heads"], a["dropout"]
    # ---- learned positional encoding (projects/oat/pe.py) ----
    p = c.pe = ml_collections.ConfigDict()
    p.sigma, p.steps, p.lr = PAPER["pe"]["sigma"], PAPER["pe"]["steps"], PAPER["pe"]["lr"]
    p.rows = 14  # R (>= max(rows, cols)): 14 for Amazon, 11 for the own data
    p.seed = 0
    # ---- training ----
    t = c.train = ml_collections.ConfigDict()
    t.batch, t.lr, t.clip = PAPER["train"]["batch"], PAPER["train"]["lr"], PAPER["train"]["clip"]
    t.steps = 40_000
    t.log_every, t.ckpt_every, t.eval_every = 200, 2_000, 2_000
    t.seed = 0
    # which parameters are tested: "last" (the official code's trainer.test after early
    # stopping) or "best" (lowest validation Δ of greedy decodes, the paper's monitor)
    t.select = "last"
    # ---- evaluation ----
    e = c.eval = ml_collections.ConfigDict()
    e.samples = PAPER["samples"]
    e.mm_samples = 10
    e.seed = 1234
    e.figure_trials = 4
    if dataset != "synthetic":
        rows, cols = PAPER["datasets"][dataset]
        m.pools = (5, 3)
        p.rows = PAPER["pe"]["rows_amazon"] if dataset == "amazon" else PAPER["pe"]["rows_own"]
        t.steps = 12_000  # ~500 epochs of Amazon's 474 training trials at batch 20
        t.eval_every = t.ckpt_every = 240
        t.log_every = 24
        del rows, cols
    if quick:
        s.rows, s.cols, s.crop_h, s.crop_w = 4, 6, 12, 8
        s.n_trials, s.max_len = 2000, 16
        m.channels, m.kernels, m.pools = (8, 16), (3, 3), (2, 1)
        m.d_app, m.d_pe, m.d_ff = 64, 64, 256
        m.enc_layers, m.dec_layers = 2, 2
        p.rows = 8
        t.lr = 1e-3
        t.steps, t.log_every, t.ckpt_every, t.eval_every = 4_000, 100, 1_000, 500
        e.samples = 20
        if dataset != "synthetic":
            m.pools = (5, 3)
            p.rows = 14 if dataset == "amazon" else 11
    return c
