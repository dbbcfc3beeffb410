"""The paper's numbers (Gould et al. 2023/2024; spec ../shared/papers/successor_heads.md), with
their evidence tags; values the spec marks unknown are absent, not invented."""

PAPER = {
    "threshold": 0.4,  # successor-head bar of the derivative code (the paper's own: unknown)
    "heads": {  # named successor heads [secondary]; their exact scores are not public
        "Pythia-1.4B": "L12H0 (about 8x the runner-up's score)",
        "GPT-2 small": "L9H1 (7/7 argmax within days)",
    },
    "models_with_heads": "Pythia 31M-12B, GPT-2 (small, XL), Llama-2-7B (Fig. 2)",
    "mod10_coverage": 0.585,  # mean coverage of the modal mod-10 feature over its class
    "probe_sae_cosine": 0.70764,
    "arithmetic_success": {"numbers 20-29": 0.89, "months": 0.53},  # days, letters: fail
    "roman_heldout_top1": 1.00,
    "pile_acronym_share": 0.238,
    "pile_greater_than_share": 0.189,
    "listing_prompts_won": "64/64",
    "pilot_smollm2": {"best_score": 0.152, "best_head": "L23H3", "chance": 0.072,
                      "copy_heads": {"L23H0": 0.989, "L23H2": 0.978, "L24H5": 0.957}},
}
