"""The paper's numbers (Wang et al., 2024/2025; spec ../shared/papers/pine.md §10, from a
third-party transcription of the ICLR 2025 version: [paper-T]), for the report."""

PAPER = {
    # RewardBench, Reasoning subset: vanilla (Shuffle) -> PINE, accuracy %
    "judge_reasoning": {
        "Llama-3-8B-Instruct": (65.3, 73.4),
        "Llama-3-70B-Instruct": (78.9, 87.6),
        "Qwen-1.5-1.8B-Chat": (48.4, 60.1),
        "Qwen-1.5-7B-Chat": (59.3, 63.0),
    },
    # Raw order effect: accuracy with the ground truth at A vs at B (Qwen-1.5-4B, full set)
    "judge_gt_a_vs_b": {"Qwen-1.5-4B-Chat": (29.5, 76.6)},
    "judge_max_flip_share": 0.48,  # up to 48% of items flip with the order (Appendix C)
    # Baselines, Llama-3-8B-Instruct Reasoning / Full
    "baselines_llama3_8b": {"NIA": (55.9, 61.9), "PCW": (56.5, 61.7), "PINE": (73.4, 66.7)},
    # RAG, NaturalQuestions, Llama-3-70B-Instruct: PINE is flat near 74-75% across gold
    # positions; vs the vanilla average +1.2 (10 docs) and -2.0 (20 docs)
    "rag_pine_flat": (74.0, 75.0),
    "rag_gain": {"k10": 1.2, "k20": -2.0},
    # wall time over vanilla
    "time_ratio": {"k2 (judge)": 2.0, "k20 (RAG)": 8.0},
}

ISSUE_TARGETS = {"time_ratio": {"k2": 1.5, "k10": 4.0}}
