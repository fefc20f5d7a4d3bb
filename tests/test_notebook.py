"""`torchdojo notebook`: a notebook that runs an experiment through the Python API and shows its report section
by section (text as markdown, figures as image outputs); executed in a kernel of this interpreter."""

import ast
import json
import time
from pathlib import Path

import nbformat
import pytest

from torchdojo import notebook
from torchdojo.cli import main
from torchdojo.errors import DojoError
from torchdojo.experiments import EXPERIMENTS

FAST = ("ladder",)  # executed in every test run; the others are marked slow (each 20-100 s on a loaded 2-core box)


def test_markdown_shows_the_report_text_as_written():
    assert notebook._md("train_acc <b> $x$ *y* [z] #1 a|b a->b") == r"train\_acc \<b> \$x\$ \*y\* \[z\] \#1 a\|b a->b"
    assert notebook._md("> quoted") == r"\> quoted"
    assert notebook._md("- a_b\n- c") == "- a\\_b\n- c"  # the report's lists stay lists
    assert notebook._md("1. not a list\n+ nor this") == "1\\. not a list\n\\+ nor this"


BLOCKS = [
    {"type": "heading", "text": "C1. The data", "level": 2},
    {"type": "text", "text": "Some text."},
    {"type": "figure", "path": "a.png", "caption": "A"},
    {"type": "table", "columns": ["x"], "rows": [[1]], "caption": ""},
    {"type": "heading", "text": "Rung 1", "level": 3},
    {"type": "figure", "path": "b.png", "caption": "B"},
    {"type": "heading", "text": "C2. More", "level": 2},
    {"type": "warning", "text": "careful"},
    {"type": "code", "text": "x = 1"},
]


def test_sections_split_at_level_two_headings():
    parts = notebook.sections(BLOCKS)
    assert [[i for i, _ in s] for s in parts] == [[0, 1, 2, 3, 4, 5], [6, 7, 8]]


def test_section_cells_put_text_in_markdown_and_figures_in_code_cells():
    cells = notebook.section_cells(BLOCKS)
    assert [(c.cell_type, c.source) for c in cells] == [
        ("markdown", "## C1. The data\n\nSome text."),
        ("code", "torchdojo.notebook.show(r, 2, 3)"),
        ("markdown", "### Rung 1"),
        ("code", "torchdojo.notebook.show(r, 5)"),
        ("markdown", "## C2. More\n\n> **Warning:** careful\n\n```\nx = 1\n```"),
    ]


def test_the_run_call_is_data_not_code():
    """Settings are written into the notebook with repr: a value cannot become code."""
    given = {"train.lr": "0.01'); import os; ('", "rungs": ["cnn"]}
    src = notebook._call("ladder", "smoke", None, given, "runs", {"device": "cpu", "data_dir": None})
    call = ast.parse(src).body[0].value
    assert isinstance(call, ast.Call) and call.func.attr == "run"
    assert ast.literal_eval(call.args[0]) == "ladder"
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    assert kw == {"scale": "smoke", "device": "cpu", "runs_dir": "runs", "set": given}


def test_unexecuted_notebook(tmp_path, capsys):
    out = tmp_path / "sub" / "ladder.ipynb"
    assert (
        main(["notebook", "ladder", "--scale", "smoke", "--set", "train.lr=0.01", "--no-execute", "-o", str(out)]) == 0
    )
    assert "(not executed)" in capsys.readouterr().out
    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    sources = [c.source for c in nb.cells]
    assert "r = torchdojo.run('ladder', scale='smoke', runs_dir='runs', set={'train.lr': '0.01'})" in sources[2]
    assert sources[-1] == "torchdojo.notebook.show_report(r)"
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--set", "train.lrr=1"], "unknown config key"),
        (["--preset", "nope"], "unknown preset"),
        (["--set", "train.cpu_fusion=false"], "not used by experiment"),
    ],
)
def test_settings_are_refused_before_a_kernel_starts(tmp_path, capsys, argv, match):
    exp = "text-autoencoder" if "cpu_fusion" in argv[-1] else "ladder"
    out = tmp_path / "nb.ipynb"
    assert main(["notebook", exp, "-o", str(out), *argv]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_output_must_be_a_notebook(tmp_path):
    with pytest.raises(DojoError, match="does not end in .ipynb"):
        notebook.write("ladder", tmp_path / "nb.txt", execute=False)


def _executed(name: str, tmp_path: Path) -> tuple[nbformat.NotebookNode, Path, float]:
    start = time.perf_counter()
    out = notebook.write(name, tmp_path / f"{name}.ipynb", scale="smoke", device="cpu")
    seconds = time.perf_counter() - start
    nb = nbformat.read(out, as_version=4)
    run_dirs = list((tmp_path / "runs" / name).iterdir())
    assert len(run_dirs) == 1  # the kernel worked in the notebook's folder
    return nb, run_dirs[0], seconds


def _outputs(nb: nbformat.NotebookNode, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})]


@pytest.mark.parametrize(
    "name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in EXPERIMENTS.names()]
)
def test_every_experiments_notebook_executes_with_its_figures(tmp_path, name):
    """The acceptance: the executed notebook of each experiment at smoke scale holds the report's sections
    (its level-2 headings as markdown), every figure of the report as an image output, and no error."""
    nb, run_dir, seconds = _executed(name, tmp_path)
    print(f"{name}: notebook written and executed in {seconds:.1f} s")
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    report = json.loads((run_dir / "report.json").read_text())
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for b in report["blocks"]:
        if b["type"] == "heading" and b.get("level", 2) <= 2:
            assert "## " + notebook._md(b["text"]) in markdown
    figures = [b for b in report["blocks"] if b["type"] == "figure"]
    assert len(_outputs(nb, "image/png")) == len(figures)
    tables = [b for b in report["blocks"] if b["type"] == "table"]
    assert len(_outputs(nb, "text/html")) >= len(tables)
    assert nb.cells[-2].outputs[0].output_type == "execute_result"  # r.summary


def test_cli_writes_an_executed_ladder_notebook(tmp_path, capsys, monkeypatch):
    """`torchdojo notebook ladder --scale smoke -o ladder.ipynb`, a failing cell made visible: a run that is
    refused inside the kernel (no such dataset folder) ends in an error naming the notebook, which is written."""
    monkeypatch.chdir(tmp_path)
    argv = ["notebook", "ladder", "--scale", "smoke", "--device", "cpu", "--set", "dataset=cifar10"]
    argv += ["--data-dir", str(tmp_path / "nothing"), "-o", "ladder.ipynb"]
    assert main(argv) == 2
    assert "a cell of ladder.ipynb failed" in capsys.readouterr().err
    nb = nbformat.read(tmp_path / "ladder.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert len(errors) == 1 and "cifar10" in errors[0].evalue


def _report_folder(tmp_path: Path) -> Path:
    """A run folder with a report of every block type, one figure outside the folder and one missing."""
    from torchdojo.report.figures import bars

    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    bars({"a": 1.0, "b": 2.0}, run / "figures" / "bars.png", ylabel="y")
    (tmp_path / "outside.png").write_bytes((run / "figures" / "bars.png").read_bytes())
    (run / "figures" / "link.png").symlink_to(tmp_path / "outside.png")
    blocks = [
        {"type": "heading", "text": "C1. Bars", "level": 2},
        {"type": "figure", "path": "bars.png", "caption": "two bars"},
        {"type": "table", "columns": ["model", "test_acc"], "rows": [["cnn", 0.8765]], "caption": "acc"},
        {"type": "figure", "path": "gone.png", "caption": ""},
        {"type": "figure", "path": "link.png", "caption": ""},
    ]
    (run / "report.json").write_text(json.dumps({"title": "t", "blocks": blocks}))
    return run


def _displayed(monkeypatch) -> list:
    """What `show` hands to IPython's display(), as (mime type, data) pairs."""
    import IPython.display

    shown: list = []

    def display(obj):
        kind = {"Image": "image/png", "HTML": "text/html", "Markdown": "text/markdown"}[type(obj).__name__]
        shown.append((kind, obj.data))

    monkeypatch.setattr(IPython.display, "display", display)
    return shown


def test_show_displays_figures_tables_and_text(tmp_path, monkeypatch):
    shown = _displayed(monkeypatch)
    run = _report_folder(tmp_path)
    notebook.show(run, 0, 1, 2, 3)
    assert [k for k, _ in shown] == ["text/markdown", "image/png", "text/markdown", "text/html", "text/markdown"]
    assert shown[0][1] == "## C1. Bars" and shown[2][1] == "*two bars*"
    assert shown[1][1] == (run / "figures" / "bars.png").read_bytes()
    assert "87.6%" in shown[3][1] and "<caption>acc</caption>" in shown[3][1]  # formatted as in the report
    assert "missing figure gone.png" in shown[4][1]
    with pytest.raises(DojoError, match="no block 9"):
        notebook.show(run, 9)


def test_show_report_displays_every_block_in_order(tmp_path, monkeypatch):
    shown = _displayed(monkeypatch)
    run = _report_folder(tmp_path)
    (run / "figures" / "link.png").unlink()  # now simply missing
    notebook.show_report(run)
    assert [k for k, _ in shown] == ["text/markdown", "image/png", "text/markdown", "text/html"] + ["text/markdown"] * 2


def test_show_reads_no_figure_outside_the_run_folder(tmp_path):
    from torchdojo.report import FigureRefused

    with pytest.raises(FigureRefused, match="outside the run folder"):
        notebook.show(_report_folder(tmp_path), 4)
