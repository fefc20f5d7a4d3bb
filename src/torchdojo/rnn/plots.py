"""Figures of the RNN study that the shared figure helpers do not cover: the gate heat map per token."""

from collections.abc import Sequence
from pathlib import Path

from torchdojo.report.figures import _plt, _save


def gate_map(
    tokens: Sequence[str], gate: Sequence[Sequence[float]], state_norm: Sequence[float], path: Path, title: str = ""
) -> Path:
    """Top: R_t per hidden unit (rows) and token (columns); bottom: mean R_t and ||h_t|| per token."""
    plt = _plt()
    fig, (ax0, ax1) = plt.subplots(
        2, 1, figsize=(max(6.0, 0.38 * len(tokens) + 2), 6.2), sharex=True, gridspec_kw={"height_ratios": [2, 1.3]}
    )
    im = ax0.imshow(gate, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax0, label="R_t")
    ax0.set_ylabel("hidden unit")
    xs = range(len(tokens))
    mean = [sum(col) / len(col) for col in zip(*gate, strict=True)]
    ax1.plot(xs, mean, "-o", ms=3, color="#3b6ea5", label="mean R_t")
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("mean R_t")
    ax2 = ax1.twinx()
    ax2.plot(xs, list(state_norm), "-s", ms=3, color="#c0392b", label="||h_t||")
    ax2.set_ylabel("||h_t||")
    ax1.set_xticks(list(xs), list(tokens), rotation=60, ha="right", fontsize=8)
    ax1.legend(loc="lower left", fontsize=7)
    ax2.legend(loc="lower right", fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
