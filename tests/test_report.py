"""Reports: every block renders, all text is escaped, `torchdojo report` re-renders from the folder
alone, and `torchdojo compare` writes a table and overlaid curves."""

import base64
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from torchdojo.cli import main
from torchdojo.report import Report, figures, render_html

EVIL = "<script>document.title='pwned'</script> & \"quotes\" 'single' <img src=x onerror=alert(1)>"
ALLOWED_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "h3",
    "h4",
    "p",
    "ul",
    "li",
    "pre",
    "div",
    "table",
    "caption",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "figure",
    "img",
    "figcaption",
    "nav",
    "ol",
    "a",
}


class Page(HTMLParser):
    """Collects the tags, attributes and text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _png(path: Path) -> Path:
    return figures.bars({"a": 1.0, "b": 2.0}, path, ylabel="y")


def _all_blocks(run: Path, s: str) -> Report:
    r = Report(f"title {s}")
    r.heading(f"heading {s}")
    r.heading("deep", level=9)
    r.text(f"para one {s}\n\npara two")
    r.text(f"- item {s}\n- item two")
    r.code(f"code {s}")
    r.warning(f"warning {s}")
    r.table(
        [{"name": s, "acc": 0.91234, "n": 12345, "nan": float("nan")}, {"name": "b", "extra": s}],
        caption=f"caption {s}",
    )
    _png(run / "figures" / "fig.png")
    r.figure("fig.png", f"figure {s}")
    r.figure(run / "figures" / "fig.png", "absolute path")
    r.figure(f"missing {s}.png", "gone")
    return r


def test_every_block_renders(tmp_path):
    run = tmp_path / "run"
    _all_blocks(run, "x").save(run)
    page = (run / "report.html").read_text()
    p = Page(page)
    tags = [t for t, _ in p.tags]
    for tag in ("h1", "h2", "h4", "p", "ul", "li", "pre", "table", "caption", "th", "td", "figure", "img"):
        assert tag in tags, tag
    assert tags.count("img") == 2 and tags.count("p") == 2 and tags.count("li") == 2
    assert "missing figure missing x.png" in "".join(p.text)
    cells = [d.strip() for d in p.text]
    assert "91.2%" in cells and "12,345" in cells and "nan" in cells  # numbers formatted
    headers = [t for t, _ in p.tags if t == "th"]
    assert len(headers) == 5  # name, acc, n, nan, extra: union of the rows' keys
    for _, attrs in p.tags:
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/png;base64,")  # self-contained
            assert base64.b64decode(attrs["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Content-Security-Policy" in page
    assert json.loads((run / "report.json").read_text())["blocks"][0] == {
        "type": "heading",
        "text": "heading x",
        "level": 2,
    }


def test_all_text_is_escaped(tmp_path):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.json").write_text(json.dumps({"experiment": EVIL, "scale": EVIL, "config": {"seed": EVIL}}))
    (run / "env.json").write_text(json.dumps({"device": EVIL, "torch": EVIL, "git_revision": EVIL}))
    _all_blocks(run, EVIL).save(run)
    page = (run / "report.html").read_text()
    assert "<script" not in page and "<img src=x" not in page
    p = Page(page)
    assert {t for t, _ in p.tags} <= ALLOWED_TAGS
    assert not any(k.startswith("on") for _, attrs in p.tags for k in attrs)  # no event handlers
    text = "".join(p.text)
    for where in ("title", "heading", "para one", "item", "code", "warning", "caption", "figure", "missing"):
        assert f"{where} {EVIL}" in text, where  # shown as text, exactly
    assert text.count(EVIL) >= 12
    alts = [attrs["alt"] for t, attrs in p.tags if t == "img"]
    assert f"figure {EVIL}" in alts


def test_report_command_rerenders_from_the_folder_alone(tmp_path, smoke_runs, capsys):
    run = tmp_path / smoke_runs[0].name  # the page names its run folder
    shutil.copytree(smoke_runs[0], run)
    original = (run / "report.html").read_bytes()
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert (run / "report.html").read_bytes() == original
    assert "missing figure" not in original.decode()


def test_report_of_a_folder_without_report_json(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fix: " in err


def test_a_smoke_run_report_shows_its_figures_and_tables(smoke_runs):
    page = (smoke_runs[0] / "report.html").read_text()
    p = Page(page)
    imgs = [a for t, a in p.tags if t == "img"]
    figs = list((smoke_runs[0] / "figures").glob("*.png"))
    assert len(imgs) == len(figs) >= 6 and "missing figure" not in page
    assert [t for t, _ in p.tags].count("table") >= 5


def test_compare_writes_labels_a_config_diff_a_table_and_overlaid_curves(tmp_path, smoke_runs, monkeypatch, capsys):
    drawn = {}
    real = figures.curves

    def spy(histories, path, **kw):
        drawn.update(histories)
        return real(histories, path, **kw)

    monkeypatch.setattr(figures, "curves", spy)
    out = tmp_path / "cmp"
    a, b = smoke_runs
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    # labelled by experiment, scale and the settings that differ (rungs, seed), not by folder or timestamp
    la, lb = "ladder smoke rungs=logreg,mlp seed=0", "ladder smoke rungs=logreg seed=1"
    assert set(drawn) == {f"{la} / logreg", f"{la} / mlp", f"{lb} / logreg"}  # every run and stage
    assert (out / "figures" / "curves.png").stat().st_size > 1000
    page = (out / "report.html").read_text()
    p = Page(page)
    text = "".join(p.text)
    assert "rungs.logreg.test_acc" in text and la in text and lb in text and str(a) in text
    assert [t for t, _ in p.tags].count("table") == 3 and [t for t, _ in p.tags].count("img") == 1
    summary_a = json.loads((a / "summary.json").read_text())
    cell = f"{100 * summary_a['rungs']['logreg']['test_acc']:.1f}%"
    assert cell in [d.strip() for d in p.text]
    cells = [d.strip() for d in p.text]
    i = cells.index("seed")  # the config-diff row: the setting, then each run's value
    assert [c for c in cells[i + 1 :] if c][:2] == ["0", "1"]
    assert "dataset" not in cells[cells.index("setting") : cells.index("final numbers (summary.json)")]  # same
    assert "rungs.logreg.test_acc" in capsys.readouterr().out  # and a table in the terminal


def test_compare_rejects_a_folder_that_is_not_a_run(tmp_path, smoke_runs, capsys):
    assert main(["compare", str(smoke_runs[0]), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no summary.json" in err and "fix: " in err


@pytest.mark.parametrize(
    "column,v,shown",
    [
        ("v", 0.5, "0.5"),
        ("v", 21.5301, "21.53"),
        ("v", 1234567.0, "1,235,000"),
        ("v", 0.0001234, "0.0001234"),
        ("v", 3.57e-7, "3.57e-07"),
        ("v", True, "True"),
        ("v", 250.25, "250.2"),
        ("v", 7, "7"),
        ("v", 1234567, "1,234,567"),
        ("test_acc", 0.8697, "87.0%"),
        ("accuracy", 0.86234, "86.2%"),
        ("val_acc", 0.99987, "99.99%"),  # never rounded up to a perfect score
        ("test_acc", 86.2, "86.2"),  # already a percentage: left alone
        ("eval_s", 1.234, "1.23 s"),
        ("s_per_epoch", 0.0129, "0.0129 s"),
        ("seconds", 1234.5, "1,234 s"),
    ],
)
def test_number_formatting(tmp_path, column, v, shown):
    r = Report("t")
    r.table([{column: v}])
    r.save(tmp_path)
    assert shown in [d.strip() for d in Page((tmp_path / "report.html").read_text()).text]


def test_a_name_value_table_formats_each_value_by_its_row_name(tmp_path):
    r = Report("t")
    r.table([{"setting": "seconds per epoch", "value": 0.3123}, {"setting": "test_acc", "value": 0.5}])
    cells = [d.strip() for d in Page(r.save(tmp_path).read_text()).text]
    assert "0.312 s" in cells and "50.0%" in cells


def test_render_html_is_deterministic(tmp_path):
    _all_blocks(tmp_path, "x").save(tmp_path)
    first = (tmp_path / "report.html").read_bytes()
    render_html(tmp_path)
    assert (tmp_path / "report.html").read_bytes() == first


def test_table_columns_are_the_union_of_row_keys_in_first_seen_order():
    r = Report("t")
    r.table([{"a": 1, "b": 2}, {"c": 3, "a": 4}, {"b": 5, "d": 6}])
    block = r.blocks[-1]
    assert block["columns"] == ["a", "b", "c", "d"]
    assert block["rows"] == [[1, 2, "", ""], [4, "", 3, ""], ["", 5, "", 6]]
    r.table([{"a": 1, "b": 2}], columns=["b", "b", "a"])  # given columns: kept in their order, each once
    assert r.blocks[-1]["columns"] == ["b", "a"] and r.blocks[-1]["rows"] == [[2, 1]]
    r.table([{"x": 1}], columns=[])  # an empty list: every key, like no columns
    assert r.blocks[-1]["columns"] == ["x"]
    r.table([])
    assert r.blocks[-1]["columns"] == [] and r.blocks[-1]["rows"] == []
