"""OAT: Object-level Attention Transformer for gaze scanpath prediction (Fang et al., ECCV 2024)."""

DESCRIPTION = ("OAT (Fang et al. 2024): object-level scanpath prediction, encoder-decoder with a "
               "pointer head, learned Gaussian PE; synthetic visual search by default")
