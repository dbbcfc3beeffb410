"""PINE (Wang et al., 2024): position-invariant inference over permutable prompt segments."""

DESCRIPTION = (
    "Wang et al. 2024, 'Eliminating Position Bias of Language Models' (PINE): segment-"
    "bidirectional attention with importance-ordered positions per head and query; judge-style "
    "flip rate, lost-in-the-middle retrieval and timing on SmolLM2 against vanilla, NIA, PCW"
)


def __getattr__(name):
    if name == "pine_logits":  # imported lazily: `headlab list` reads DESCRIPTION without JAX
        from projects.pine.forward import pine_logits

        return pine_logits
    raise AttributeError(name)
