"""The figures: retrieval accuracy by gold position (one panel per k), and time per forward."""

from __future__ import annotations

import pathlib

import matplotlib.pyplot as plt

from common.plotting import save_checked as save

STYLE = {
    "vanilla": dict(color="black", marker="o"),
    "nia": dict(color="tab:gray", marker="v", linestyle=":"),
    "pcw": dict(color="tab:purple", marker="s", linestyle=":"),
    "pine": dict(color="tab:red", marker="D", linewidth=2.2),
    "pine_no_reassign": dict(color="tab:orange", marker="^", linestyle="--"),
    "pine_reverse": dict(color="tab:blue", marker="x", linestyle="--"),
}
LABEL = {"vanilla": "vanilla", "nia": "NIA", "pcw": "PCW", "pine": "PINE",
         "pine_no_reassign": "PINE w/o re-assignment", "pine_reverse": "PINE reversed"}


def retrieval_figure(retrieval: dict, out_dir: pathlib.Path, model: str = "SmolLM2") -> list[str]:
    """Accuracy (%) against the gold document's position, a panel per k, shared y axis."""
    ks = list(retrieval)
    fig, axes = plt.subplots(1, len(ks), figsize=(max(4.2 * len(ks), 9.0), 4.0), sharey=True,
                             squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], ks, strict=True):
        for method, accs in retrieval[key].items():
            ax.plot(range(1, len(accs) + 1), [100 * a for a in accs], label=LABEL[method],
                    **STYLE[method])
        k = len(next(iter(retrieval[key].values())))
        ax.set_title(f"k = {k} documents")
        ax.set_xlabel("position of the gold document (1 = first)")
        ax.set_xticks(range(1, k + 1))
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("retrieval accuracy (%)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=(len(labels) + 1) // 2,
               frameon=False)
    fig.suptitle(f"Synthetic lost-in-the-middle, {pathlib.Path(model).name}")
    return save(fig, out_dir, "retrieval_by_position")


def timing_figure(timing: dict, memory: dict, out_dir: pathlib.Path,
                  model: str = "SmolLM2") -> list[str]:
    """Against k, per method (the plain forward too): seconds per forward of one prompt (left)
    and the compiled program's temporaries in MiB (right; the arguments, mostly the weights,
    are the same for every method and are left out)."""
    keys = sorted(timing, key=lambda s: int(s[1:]))
    ks = [int(s[1:]) for s in keys]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11.0, 4.2), layout="constrained")
    methods = [m for m in timing[keys[0]] if m != "tokens"]
    for m in methods:
        style = STYLE.get(m, dict(color="tab:green", marker="*", linestyle="-."))
        label = LABEL.get(m, "plain forward")
        ax_t.plot(ks, [timing[key][m] for key in keys], label=label, **style)
        ax_m.plot(ks, [memory[key][m]["temp"] / 2**20 for key in keys], **style)
    ax_t.set_ylabel("seconds per forward (median)")
    ax_t.set_title("time")
    ax_m.set_ylabel("temporaries of the compiled program (MiB)")
    ax_m.set_title("memory")
    for ax in (ax_t, ax_m):
        ax.set_xlabel("number of segments k")
        ax.set_xticks(ks)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle(f"One prompt of ~{timing[keys[0]]['tokens']} tokens, "
                 f"{pathlib.Path(model).name}, CPU")
    fig.legend(loc="outside right upper", frameon=False)
    return save(fig, out_dir, "timing")
