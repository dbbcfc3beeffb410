"""The paper's numbers (Yu et al. 2024; spec ../shared/papers/act_calibration.md), with their
evidence tags. Values the spec marks unknown are absent, not invented: the per-dataset tables
of the PDF were not available to us."""

PAPER = {
    "title": "Unveiling and Harnessing Hidden Attention Sinks: Enhancing Large Language Models "
             "without Training through Attention Calibration (ICML 2024)",
    "best_avg_gain_points": 7.30,  # [abstract] average accuracy gain, Llama-30B
    "best_avg_gain_model": "Llama-30B",
    "secondary_gains": {"MMLU": 7.3, "HellaSwag": 13.26},  # [secondary], not verified
    "beta": 0.4,  # [code] scripts/evaluation.sh
    "threshold": 0.1,  # [code] THRES, absolute column-mean bar
    "layers": "2..30 of 32 (first two and last left alone)",  # [code]
    "calib_examples": 900,  # [code] per task type, from the train splits
    "heads_selected_llama2_7b": {"classification": 184, "of": 928},  # [code] augment_index.py
}
