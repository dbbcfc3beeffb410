"""What the paper, its code and the spec give us (../shared/papers/soft_injection.md), in one place.

The per-model main table is unknown to us (spec §5); only the abstract's averages, a review's
ablation numbers and the method's settings are known. The pilot rows are the spec's own quick
SmolLM2 runs (§10), not the paper's.
"""

PAPER = {
    "title": "Soft Injection of Task Embeddings Outperforms Prompt-Based In-Context Learning "
             "(Park & Rhee 2025; SITE)",
    # abstract: soft injection minus 10-shot ICL, averaged over 57 tasks, across 12 LLMs
    "gain_over_icl10_points": (10.2, 14.3),
    "gain_over_icl10_points_v1": (10.1, 13.9),
    "models": "12 LLMs, 4B-70B (Llama-3.1, Qwen3, Mistral/Mixtral, Gemma-3)",
    "metric": "exact match on the test split (first-token accuracy is the code's default)",
    "n_tasks": 57,
    # review of the ICLR submission, Table 4 (M = 1 prompt): model and task set not stated
    "m1_ablation": {"soft_injection": 88.7, "icl_10": 76.7},
    "binary_fraction": (0.8, 0.9),  # "80-90% of the alpha converge to ~0 or ~1" (paper §4)
    "settings": {"prompts_M": 50, "shots_N": 10, "steps": 400, "lr": 0.2, "alpha_init": 0.5,
                 "val_every": 50, "val_items": 100, "batch": 1},
    "pilot_smollm2": {  # spec §10: M=20, 150 steps, 30 test items, first-token, 6 tasks
        "zero_shot": 0.02, "icl_10": 0.42, "soft_injection": 0.57,
        "tasks": {"country-capital": (0.03, 0.47, 0.50), "antonym": (0.00, 0.07, 0.43),
                  "present-past": (0.00, 1.00, 0.93), "english-french": (0.03, 0.20, 0.30),
                  "capitalize_first_letter": (0.00, 0.60, 0.73),
                  "next_item": (0.03, 0.17, 0.53)},
    },
}
