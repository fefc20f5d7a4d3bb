"""What a report looks like: the summary (from summary.json) and the table of contents at the top, the smoke-scale
banner, readable headers, titles true to the run, sections in course order, and figures whose ticks, legends,
labels and confusion matrices are readable."""

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from torchdojo.commands.compare_cmd import config_diff, labels
from torchdojo.report import Report, ReportError, figures, render_html
from torchdojo.report.format import format_value, kind_of, readable
from torchdojo.report.summary import summary_tables


class Outline(HTMLParser):
    """The page's elements in order, as (tag, attributes, text directly inside)."""

    def __init__(self, text: str):
        super().__init__()
        self.items: list[list[Any]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.items.append([tag, dict(attrs), ""])

    def handle_data(self, data):
        if self.items:
            self.items[-1][2] += data

    def index(self, tag: str, **attrs: str) -> int:
        return next(
            i for i, (t, a, _) in enumerate(self.items) if t == tag and all(a.get(k) == v for k, v in attrs.items())
        )


LADDER_LIKE = {
    "dataset": "fashion-mnist",
    "rungs": {
        "logreg": {"test_acc": 0.8412, "params": 7850, "s_per_epoch": 1.25, "curve": [1, 2]},
        "cnn": {"test_acc": 0.9121, "params": 856170, "s_per_epoch": 8.5, "extra": {"deep": 1}, "why": "x " * 40},
    },
    "layers": [{"layer": "conv", "params": 10}, {"layer": "fc", "params": 20}],
    "speed": {"forward_s": 0.001, "device": "cpu"},
    "seconds": 12.5,
}


def test_summary_tables_flatten_regime_by_metric_and_list_the_other_numbers():
    tables = summary_tables(LADDER_LIKE)
    by_caption = {t.caption: t for t in tables}
    rungs = by_caption["rungs"]
    assert rungs.columns == ["rungs", "test_acc", "params", "s_per_epoch"]  # plain values only: no curve, no dict
    assert rungs.rows == [["logreg", 0.8412, 7850, 1.25], ["cnn", 0.9121, 856170, 8.5]]
    assert by_caption["layers"].rows == [["1", "conv", 10], ["2", "fc", 20]]
    numbers = by_caption["numbers of the run"]
    assert numbers.rows == [
        ["dataset", "fashion-mnist"],
        ["speed · forward (s)", 0.001],
        ["speed · device", "cpu"],
        ["seconds", 12.5],
    ]
    assert tables[-1] is numbers  # the regime tables first


def test_readable_headers_and_kinds():
    assert readable("test_acc") == "test accuracy" and readable("s_per_epoch") == "seconds per epoch"
    assert readable("n_images") == "number of images" and readable("eval_s") == "evaluation (s)"
    assert readable("inverse_err_per_layer") == "inverse err per layer"  # fallback: words
    for kept in ("efficientnet_lite0:frozen", "||h|| at k=0", "dL/dX", "Fisher block1", "cnn"):
        assert readable(kept) == kept  # not a snake_case key: shown as it is
    assert [kind_of(k) for k in ("test_acc", "kNN test acc", "rungs.cnn.val_acc", "accuracy")] == ["percent"] * 4
    assert [kind_of(k) for k in ("eval_s", "rungs.mlp.s_per_epoch", "train seconds", "forward (s)")] == ["seconds"] * 4
    assert [kind_of(k) for k in ("loss", "epochs", "s", "params", "accurate_count")] == ["number"] * 5
    assert format_value(float("inf")) == "inf" and format_value(-0.5, "percent") == "-0.5"


def _run_folder(tmp_path: Path, scale: str, summary: dict | None) -> Path:
    run = tmp_path / f"run-{scale}"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"experiment": "ladder", "scale": scale, "config": {"seed": 0}}))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text('{"stage": "cnn", "epoch": 1, "train_loss": 2.3}\n')
    r = Report("torchdojo ladder: t")
    r.heading("C1. The data")
    r.text("words")
    r.heading("Rung 1", level=3)
    r.table([{"a": 1}])
    r.heading("C2. Augmentation")
    r.heading("deep", level=4)
    r.save(run)
    return run


def test_the_summary_and_the_contents_come_first(tmp_path):
    run = _run_folder(tmp_path, "small", LADDER_LIKE)
    page = Outline((run / "report.html").read_text())
    nav, summary, first = page.index("nav"), page.index("h2", id="summary"), page.index("h2", id="s0")
    assert page.index("h1") < nav < summary < first
    links = [a["href"] for t, a, _ in page.items if t == "a"]
    assert links == ["#summary", "#s0", "#s2", "#s4"]  # sections and their parts; level 4 is left out
    ids = {a.get("id") for _, a, _ in page.items}
    assert all(link[1:] in ids for link in links)  # every entry leads somewhere
    cells = [text.strip() for t, _, text in page.items[summary:first] if t == "td"]
    assert ["logreg", "84.1%", "7,850", "1.25 s"] == cells[:4]  # the run's own numbers, formatted
    heads = [text.strip() for t, _, text in page.items[summary:first] if t == "th"]
    assert "test accuracy" in heads and "seconds per epoch" in heads
    assert "class='smoke'" not in (run / "report.html").read_text()  # a small run: no banner


def test_a_smoke_run_has_a_banner_and_an_unfinished_run_says_so(tmp_path):
    run = _run_folder(tmp_path, "smoke", None)
    page = (run / "report.html").read_text()
    outline = Outline(page)
    banner = outline.index("div", **{"class": "smoke"})
    assert outline.index("h1") < banner < outline.index("nav")
    assert "wiring test" in outline.items[banner][2] and "means nothing" in outline.items[banner][2]
    assert "has not finished" in page  # no summary.json yet: said, not hidden
    (run / "metrics.jsonl").unlink()  # a smoke run that trained nothing (exact counts only): no banner
    assert "class='smoke'" not in render_html(run).read_text()


def test_the_summary_given_at_save_wins_over_a_missing_file_and_a_bad_file_is_refused(tmp_path):
    run = _run_folder(tmp_path, "small", None)
    Report.load(run).save(run, {"rungs": {"cnn": {"test_acc": 0.5}}})
    assert "50.0%" in (run / "report.html").read_text()
    (run / "summary.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match="summary.json"):
        render_html(run)


def test_a_report_without_a_run_folder_has_no_summary_section(tmp_path):
    r = Report("t")
    r.heading("only")
    page = r.save(tmp_path).read_text()
    assert "id='summary'" not in page and "<nav" not in page  # one heading: no contents either


def test_a_smoke_ladder_run_is_titled_by_its_dataset_and_rungs(smoke_runs):
    page = (smoke_runs[0] / "report.html").read_text()
    assert "<h1>torchdojo ladder: classification ladder on digits: logreg -&gt; mlp</h1>" in page
    assert "CIFAR-10" not in page.split("</h1>")[0]
    assert "class='smoke'" in page and "<nav class='toc'>" in page


def test_rnn_sections_follow_the_course_order(tmp_path):
    from torchdojo.experiments import rnn
    from torchdojo.experiments.base import run_experiment

    path = run_experiment(rnn, scale="smoke", device="cpu", runs_root=tmp_path, verbose=False)
    headings = [b["text"] for b in json.loads((path / "report.json").read_text())["blocks"] if b["type"] == "heading"]
    ids = [m.group(1) for h in headings if (m := re.match(r"(F\d)\.", h))]
    assert ids == sorted(ids) and set(ids) == {"F1", "F2", "F3", "F4"}, headings


# --- figures ------------------------------------------------------------------------------------------------


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The matplotlib figures handed to `_save`, kept open for inspection (drawn, then closed at the end)."""
    kept: list = []
    real, plt = figures._save, figures._plt()
    real_close = plt.close

    def keep(fig, path):
        fig.canvas.draw()
        kept.append(fig)
        return real(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    yield kept
    for fig in kept:
        real_close(fig)


def _hist(n: int) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_acc": e / 10, "val_acc": e / 11}
        for e in range(1, n + 1)
    ]


def test_curves_have_whole_epoch_ticks_and_a_legend_below_the_panels(tmp_path, drawn):
    figures.curves({f"run-{i}/stage": _hist(3) for i in range(8)}, tmp_path / "c.png")
    fig = drawn[-1]
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_legend() is None  # no legend inside a panel
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 16
    figures.curves({"one epoch": _hist(1)}, tmp_path / "one.png")
    assert list(drawn[-1].axes[0].get_xticks()) == [1]  # one whole tick, not 0.95, 0.975, ...
    figures.curves({"long": _hist(40)}, tmp_path / "long.png")
    assert all(float(t).is_integer() for t in drawn[-1].axes[0].get_xticks())
    box = legend.get_window_extent()
    assert all(box.y1 <= ax.get_window_extent().y0 for ax in fig.axes)  # wholly below every panel


def test_a_confusion_matrix_shows_counts_and_the_row_normalised_view(tmp_path, drawn):
    cm = np.array([[8, 2, 0], [1, 1, 0], [0, 0, 5]])
    figures.confusion_matrix(cm, ["a", "b", "c"], tmp_path / "cm.png", title="t")
    counts, shares = drawn[-1].axes
    texts = lambda ax: [t.get_text() for t in ax.texts]  # noqa: E731
    assert texts(counts) == ["8", "2", "0", "1", "1", "0", "0", "0", "5"]
    assert texts(shares) == ["80", "20", "0", "50", "50", "0", "0", "0", "100"]  # each row sums to 100%
    assert "normalised" in shares.get_title()


def test_bar_labels_never_overlap(tmp_path, drawn):
    values = {f"efficientnet_lite0:regime-{i}": 0.1 * i for i in range(1, 11)}
    figures.bars(values, tmp_path / "b.png", ylabel="test accuracy")
    fig = drawn[-1]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    assert len(boxes) == 10
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    values_shown = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
    assert len(values_shown) == 10 and not any(
        a.overlaps(b) for i, a in enumerate(values_shown) for b in values_shown[i + 1 :]
    )
    assert max(b.y1 for b in values_shown) <= ax.get_window_extent(renderer).y1  # inside the axes


# --- compare: labels and the config diff -------------------------------------------------------------------


def _cfg(**over: Any) -> dict[str, Any]:
    config = {"seed": 0, "rungs": ["logreg", "mlp"], "train": {"lr": 0.001, "epochs": 1}}
    cfg = {"experiment": "ladder", "scale": "smoke", "preset": None, "overrides": [], "config": config}
    for k, v in over.items():
        if k == "overrides":
            cfg["overrides"] = v
        else:
            config["train" if k == "lr" else k] = {**config["train"], "lr": v} if k == "lr" else v
    return cfg


def test_compare_labels_name_what_differs_and_never_collide():
    a = _cfg(overrides=["train.lr=0.01"], lr=0.01)
    b = _cfg()
    c = _cfg(overrides=["seed=3"], seed=3)
    assert labels([a, b, c], ["ra", "rb", "rc"]) == [
        "ladder smoke train.lr=0.01 seed=0",
        "ladder smoke train.lr=(stage default) seed=0",
        "ladder smoke train.lr=(stage default) seed=3",
    ]
    assert labels([b, _cfg()], ["r1", "r2"]) == ["ladder smoke (r1)", "ladder smoke (r2)"]  # same settings
    diff = config_diff([a, c], ["A", "C"])
    assert diff == [{"setting": "seed", "A": 0, "C": 3}, {"setting": "train.lr", "A": 0.01, "C": 0.001}]


def test_compare_of_runs_differing_in_rungs_shows_them(tmp_path, smoke_runs):
    a = tmp_path / "a"
    shutil.copytree(smoke_runs[0], a)
    configs = [json.loads((p / "config.json").read_text()) for p in (a, smoke_runs[1])]
    rows = {r["setting"]: r for r in config_diff(configs, ["A", "B"])}
    assert rows["rungs"]["A"] == "logreg,mlp" and rows["rungs"]["B"] == "logreg"
    assert "dataset" not in rows  # the same in both: left out
