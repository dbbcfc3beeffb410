"""What the paper and its code give us (spec ../shared/papers/oat.md), in one place.

The paper's results tables were not available to us (spec §9: "Main-table numbers: unknown"), so
no published metric value is set beside ours; the report says so. What is known is the setup.
"""

PAPER = {
    "architecture": {"d_model": 512, "d_app": 256, "d_pe": 256, "heads": 4, "d_ff": 512,
                     "enc_layers": 4, "dec_layers": 4, "pointer_heads": 2, "dropout": 0.1},
    "params_inferred": "~17-18M (spec §4, inferred)",
    "pe": {"sigma": 2.0, "steps": 10_000, "lr": 0.01, "rows_amazon": 14, "rows_own": 11,
           "width": 86},
    "train": {"lr": 1e-4, "batch": 20, "clip": 1.0, "max_epochs": 500, "patience": 30},
    "samples": 100,
    "amazon_trials": {"total": 593, "train": 474, "validation": 59, "test": 60},
    "results": None,  # the main table is unknown to us
    "datasets": {"amazon": (6, 14), "yogurt": (3, 9), "wine": (2, 11), "shampoo": (3, 9)},
}
