"""E3: the regimes of the metric-learning experiment side by side: test accuracy, convergence speed and
feature-map quality per layer, with a conclusion drawn from the measured numbers (not a canned text): test
accuracy compared through `torchdojo.stats.compare`, so one seed is not made to pick a winner.
"""

from typing import Any

from torchdojo import stats
from torchdojo.metric.regimes import RegimeResult
from torchdojo.report import Report, figures
from torchdojo.runs import Run


def _fmt_conv(ep: int | None, sec: float | None) -> tuple[Any, Any]:
    return ("not reached", "-") if ep is None else (ep, round(sec or 0.0, 1))


def report_comparison(
    report: Report,
    run: Run,
    results: dict[str, RegimeResult],
    evals: dict[str, dict[str, Any]],
    layer_names: list[str],
    pixels: dict[str, float],
    target_acc: float,
    probe_images: int,
) -> None:
    """E3: tables and convergence plots of every regime side by side, and a conclusion from the numbers."""
    names = list(results)
    layers = [*layer_names, "embedding"]
    report.heading("E3. The regimes side by side")
    rows = []
    for n in names:
        e = evals[n]
        ep, sec = _fmt_conv(e["epochs_to_target"], e["seconds_to_target"])
        kep, ksec = _fmt_conv(e["knn_epochs_to_target"], e["knn_seconds_to_target"])
        rows.append(
            {
                "regime": n,
                "test acc": e["test_acc"],
                "kNN test acc": e["knn_test_acc"],
                f"epochs to val acc {target_acc}": ep,
                "seconds to it": sec,
                f"epochs to kNN val acc {target_acc}": kep,
                "seconds to it (kNN)": ksec,
                "train seconds": round(e["train_seconds"], 1),
                "spread": e["spread"],
                **{f"Fisher {ln}": e["separability"][ln]["fisher"] for ln in layers},
                "collapse": "yes" if e["collapse_warnings"] else "no",
            }
        )
    report.table(
        rows,
        caption="test accuracy, convergence (epochs counted over all stages; seconds = "
        "training time) and feature quality (Fisher ratio of pooled features, test set)",
    )
    sep_rows = [
        {
            "layer": "input pixels (8x8 avg)",
            **{f"Fisher {n}": pixels["fisher"] for n in names},
            **{f"probe acc {n}": pixels["probe"] for n in names},
        }
    ]
    for ln in layers:
        sep_rows.append(
            {
                "layer": ln,
                **{f"Fisher {n}": evals[n]["separability"][ln]["fisher"] for n in names},
                **{f"probe acc {n}": evals[n]["separability"][ln]["probe"] for n in names},
            }
        )
    report.table(
        sep_rows,
        caption="feature-map quality per layer: Fisher ratio trace(Sw^-1 Sb) of globally "
        "average-pooled features on the test set, and the test accuracy of a logistic-regression "
        f"probe fitted on {probe_images} training images' features",
    )
    series_ep = {}
    series_s = {}
    for n in names:
        rows_m = results[n].monitor.rows
        series_ep[f"{n} kNN"] = ([r["epoch"] for r in rows_m], [r["knn_val_acc"] for r in rows_m])
        secs = [sum(r["seconds"] for r in rows_m[: j + 1]) for j in range(len(rows_m))]
        series_s[f"{n} kNN"] = (secs, [r["knn_val_acc"] for r in rows_m])
        cls_rows = [r for rows in results[n].stages.values() for r in rows if r.get("stage") != "e2-triplet"]
        offset = sum(len(rows) for st, rows in results[n].stages.items() if st == "e2-triplet")
        series_ep[f"{n} classifier"] = (
            [offset + j + 1 for j in range(len(cls_rows))],
            [r["val_acc"] for r in cls_rows],
        )
    figures.line_plot(
        series_ep,
        run.figure_path("convergence"),
        "epoch (all stages)",
        "validation accuracy",
        title="convergence: kNN on the embedding and the classifier head",
    )
    figures.line_plot(
        series_s,
        run.figure_path("convergence_seconds"),
        "training seconds",
        "kNN validation accuracy",
        title="convergence against wall-clock training time",
    )
    report.figure(
        "convergence.png",
        "validation accuracy per epoch: kNN vote on the embedding (every regime, "
        "every epoch) and the classifier head (E2's head only exists after its triplet stage)",
    )
    report.figure("convergence_seconds.png", "kNN validation accuracy against training seconds")
    report.text(conclusion(evals, layers))


def conclusion(evals: dict[str, dict[str, Any]], layers: list[str]) -> str:
    """E3's reading of this run, from `evals`: test accuracy compared through `stats.compare` (one seed says it
    cannot decide; a regime that did not learn is never called better), then the embedding, convergence and
    the deepest block's separability as measured, and the collapse warnings."""
    names = list(evals)
    learned = {n: True if evals[n].get("learned", True) else evals[n].get("learned_reason", False) for n in names}
    cmps = stats.compare({n: [evals[n]["test_acc"]] for n in names}, learned=learned, pairs="all")
    bullets = "\n".join(f"- {c.text}" for c in cmps)
    fisher = ", ".join(f"{n} {evals[n]['separability']['embedding']['fisher']:.2f}" for n in names)
    knn = ", ".join(f"{n} {stats.fmt_value(evals[n]['knn_test_acc'], '%')}" for n in names)
    reached = [n for n in names if evals[n]["epochs_to_target"] is not None]
    text = [f"Embedding on this run: Fisher ratio {fisher}; kNN test accuracy {knn}."]
    if reached:
        fast = min(reached, key=lambda n: evals[n]["epochs_to_target"])
        text.append(
            f"Convergence: {fast} reached the target validation accuracy first "
            f"({evals[fast]['epochs_to_target']} epochs, {evals[fast]['seconds_to_target']:.0f} s)"
            + (f"; {', '.join(n for n in names if n not in reached)} never did." if len(reached) < len(names) else ".")
        )
    else:
        text.append("Convergence: no regime reached the target validation accuracy.")
    deep = layers[-2] if len(layers) > 1 else layers[-1]
    text.append(
        f"Deepest conv block ({deep}) Fisher ratio: "
        + ", ".join(f"{n} {evals[n]['separability'][deep]['fisher']:.2f}" for n in names)
        + "."
    )
    collapsed = [n for n in names if evals[n]["collapse_warnings"]]
    if collapsed:
        text.append(f"Collapse warnings: {', '.join(collapsed)} (see the warning in each regime's section).")
    if len(names) > 1:
        text.append(
            "These are one seed's numbers: `torchdojo run metric-learning --seeds 5` gives each a 95% interval "
            "and calls a difference only when the interval excludes zero."
        )
    head = f"Test accuracy, regime against regime:\n\n{bullets}\n\n" if cmps else ""
    return head + " ".join(text)
