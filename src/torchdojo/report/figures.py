"""Figures as PNG files: training curves, labelled image grids, confusion matrices, bar charts.

Text in a figure is drawn literally (a '$' is a dollar, never mathtext) and capped: a label longer than its cap ends
in '…', so a 5000-character class name gives a figure of the usual size. Every figure is written through `_save`:
a uniquely named temp file in the same folder, then a rename, so concurrent writers never collide and a reader
never sees half a PNG.
"""

import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchdojo.errors import DojoError

LABEL_CHARS = 40  # tick labels, class names, per-image titles and row labels
TEXT_CHARS = 100  # any other text (titles, axis labels, legend entries), per line
TEXT_LINES = 6
DPI = 90
MAX_SIDE_PX = 8000  # a bigger figure is drawn at a lower dpi


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def cap(text: Any, chars: int = LABEL_CHARS, lines: int = 2) -> str:
    """`text` as drawn: at most `lines` lines of at most `chars` characters (cut ones end in '…'), '$' literal."""
    rows = str(text).replace("\\$", "$").split("\n")  # undo an earlier cap's escapes: capping twice is capping once
    if len(rows) > lines:
        rows = rows[:lines]
        rows[-1] = rows[-1][: chars - 1] + "…"
    rows = [r if len(r) <= chars else r[: chars - 1] + "…" for r in rows]
    return "\n".join(rows).replace("$", "\\$")


def _cap_figure_text(fig: Any) -> None:
    """Every text of `fig` capped (`cap`): tick labels given as strings at LABEL_CHARS, the rest at TEXT_CHARS."""
    from matplotlib.category import StrCategoryFormatter
    from matplotlib.text import Text
    from matplotlib.ticker import FixedFormatter, FuncFormatter

    for ax in fig.axes:
        for axis in (getattr(ax, name, None) for name in ("xaxis", "yaxis", "zaxis")):
            if axis is None:
                continue
            for which in (axis.major, axis.minor):
                fmt = which.formatter
                if isinstance(fmt, FixedFormatter):
                    fmt.seq = [cap(s) for s in fmt.seq]
                elif isinstance(fmt, StrCategoryFormatter):  # bars of named categories
                    wrapped = FuncFormatter(lambda x, pos=None, f=fmt: cap(f(x, pos)))
                    (axis.set_major_formatter if which is axis.major else axis.set_minor_formatter)(wrapped)
    for t in fig.findobj(Text):
        text = t.get_text()
        capped = cap(text, TEXT_CHARS, TEXT_LINES)
        if capped != text:
            t.set_text(capped)


def _tidy(fig: Any) -> None:
    """Cap the figure's texts (so none is read as mathtext), then lay its panels out."""
    _cap_figure_text(fig)
    fig.tight_layout()


def _save(fig: Any, path: Path) -> Path:
    """Write `fig` to `path` (PNG) through a temp file of a unique name in the same folder and a rename; the file's
    mode follows the umask. An unwritable folder or a full disk is a DojoError naming the path."""
    path = Path(path)
    tmp: Path | None = None
    try:
        _cap_figure_text(fig)
        w, h = fig.get_size_inches()
        dpi = min(DPI, MAX_SIDE_PX / max(w, h, 1e-6))
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(8):
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
                break
            except FileExistsError:
                tmp = None
        else:
            raise FileExistsError(f"no free temp name next to {path}")
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise DojoError(
            f"cannot write the figure {path}: {e.strerror or e}",
            "make the run folder writable and free some disk space, then run again (or --resume)",
        ) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _plt().close(fig)
    return path


def _integer_ticks(ax: Any, values: Sequence[float] = ()) -> None:
    """Whole numbers only on the x axis (epochs, steps): each one when there are few (a single epoch gets one
    tick, centred), else as many as fit."""
    from matplotlib.ticker import MaxNLocator

    whole = sorted({int(v) for v in values if float(v).is_integer()})
    if whole and whole[-1] - whole[0] <= 15:
        ax.set_xticks(range(whole[0], whole[-1] + 1))
        if whole[0] == whole[-1]:
            ax.set_xlim(whole[0] - 1, whole[0] + 1)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_below(fig: Any, axes: Sequence[Any], fontsize: float = 8) -> None:
    """One legend for the whole figure, below its panels, so it never covers a curve; several columns when long."""
    handles, labels = {}, []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    if not labels:
        return
    ncol = max(1, min(len(labels), 4 if max(len(s) for s in labels) > 24 else 6))
    fig.legend(
        [handles[label] for label in labels],
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=ncol,
        fontsize=fontsize,
        frameon=False,
    )


def curves(
    histories: dict[str, list[dict[str, Any]]], path: Path, keys: Sequence[str] = ("loss", "acc"), title: str = ""
) -> Path:
    """One panel per key (loss, acc); train solid and val dashed, one colour per run/rung; whole-epoch ticks and
    the legend below the panels."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], keys, strict=True):
        for i, (name, rows) in enumerate(histories.items()):
            c = colors[i % len(colors)]
            ep = [r["epoch"] for r in rows]
            if rows and f"train_{key}" in rows[0]:
                ax.plot(ep, [r[f"train_{key}"] for r in rows], "-o", ms=3, color=c, label=f"{name} train")
            if rows and f"val_{key}" in rows[0]:
                ax.plot(ep, [r[f"val_{key}"] for r in rows], "--s", ms=3, color=c, label=f"{name} val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        _integer_ticks(ax, [r["epoch"] for rows in histories.values() for r in rows])
    if title:
        fig.suptitle(title)
    _tidy(fig)
    _legend_below(fig, axes[0])
    return _save(fig, path)


def _to_img(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) uint8/float tensor -> HxW or HxWx3 array for imshow."""
    x = x.detach().cpu()
    if x.dtype != torch.uint8:
        x = x.float()
        x = (x - x.min()) / (x.max() - x.min() + 1e-8)
    arr = x.numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def image_grid(
    images: Sequence[torch.Tensor],
    path: Path,
    ncols: int,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    title: str = "",
    cell: float = 1.3,
) -> Path:
    """Images in a grid; optional per-image titles and per-row labels (e.g. class names)."""
    plt = _plt()
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(cell * ncols + (1.6 if row_labels else 0), cell * nrows), squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if i < len(images):
            img = _to_img(images[i])
            ax.imshow(
                img,
                cmap="gray" if img.ndim == 2 else None,
                vmin=0 if img.dtype == np.uint8 else None,
                vmax=255 if img.dtype == np.uint8 else None,
            )
            if titles:
                ax.set_title(cap(titles[i], LABEL_CHARS, 3), fontsize=7)
        if row_labels and i % ncols == 0 and i // ncols < len(row_labels):
            ax.set_ylabel(cap(row_labels[i // ncols]), rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(cap(title, TEXT_CHARS, TEXT_LINES), fontsize=10)
    _tidy(fig)
    return _save(fig, path)


def _matrix_panel(ax: Any, shown: np.ndarray, labels: np.ndarray | None, names: list[str], font: float) -> None:
    """One confusion-matrix panel: `shown` (row-normalised, 0..1) as colour, `labels` as the cell texts."""
    k = len(names)
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    if labels is not None:
        for i in range(k):
            for j in range(k):
                color = "white" if shown[i, j] > 0.5 else "black"
                ax.text(j, i, labels[i, j], ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=font)
    ax.set_yticks(range(k), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")


def confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> Path:
    """Two panels, rows true classes and columns predictions: the counts, and next to them the row-normalised
    matrix (each row sums to 100%: the share of a class's images given each label; its diagonal is the recall).
    Both are coloured by the row-normalised share; the cell texts are left out past 30 classes."""
    plt = _plt()
    k = len(classes)
    side = min(0.55 * k, 60.0)  # past ~100 classes the cells shrink instead of the figure growing
    font = max(1.0, min(8.0, 72 * 0.8 * side / max(k, 1)))
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 4, side + 2.2), squeeze=False)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    names = [cap(c) for c in classes]
    texts = k <= 30
    counts = np.vectorize(lambda v: str(int(v)))(cm) if texts and k else None
    shares = np.vectorize(lambda v: f"{100 * v:.0f}")(norm) if texts and k else None
    _matrix_panel(axes[0, 0], norm, counts, names, font)
    axes[0, 0].set_title("counts")
    _matrix_panel(axes[0, 1], norm, shares, names, font)
    axes[0, 1].set_title("row-normalised (% of each true class)")
    if title:
        fig.suptitle(title)
    _tidy(fig)
    return _save(fig, path)


def bars(values: dict[str, float], path: Path, ylabel: str, title: str = "") -> Path:
    """One bar per name, its value above it. Long or many names are drawn upright (rotated 90 degrees) so that no
    two labels touch; value labels get head room above the tallest bar."""
    plt = _plt()
    names = [cap(name) for name in values]  # names cut alike stay separate bars
    slant = len(values) > 6 or max((len(n) for n in names), default=0) > 10
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(values) + 2), 3.8 if slant else 3.5))
    heights = [float(v) for v in values.values()]
    drawn = ax.bar(range(len(values)), heights, color="#3b6ea5")
    ax.bar_label(drawn, labels=[f"{v:.3g}" for v in heights], padding=2, fontsize=7)
    top = max([h for h in heights if h == h] + [0.0])
    if top > 0:
        ax.set_ylim(top=top * 1.12)
    if slant:  # upright names, one per bar: they cannot touch however long they are
        ax.set_xticks(range(len(values)), names, rotation=90, fontsize=8)
    else:
        ax.set_xticks(range(len(values)), names, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _tidy(fig)
    return _save(fig, path)


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
) -> Path:
    """Several named (x, y) lines on one axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, (x, y) in series.items():
        ax.plot(list(x), list(y), label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 4:  # many lines: the legend goes below the axes, off the curves
        _tidy(fig)
        _legend_below(fig, [ax])
    else:
        ax.legend(fontsize=8)
    return _save(fig, path)
