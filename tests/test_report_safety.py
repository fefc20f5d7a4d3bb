"""Reports read only their own run folder, figures stay a normal size whatever their labels, and concurrent
figure writers never collide (issue 16, item 2 and the figure temp name of item 4)."""

import base64
import errno
import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from torchdojo.cli import main
from torchdojo.errors import DojoError
from torchdojo.report import FigureRefused, Report, ReportError, figures, render_html

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OLD_PAGE = b"<html>the report.html written before</html>"
LONG = "x" * 5000


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """A run folder with one real figure, and outside it a real PNG (other pixels) and a secret text file."""
    run = tmp_path / "run"
    figures.bars({"a": 1.0, "b": 2.0}, run / "figures" / "ok.png", ylabel="y")
    outside = tmp_path / "outside"
    figures.bars({"outside": 3.0, "secret": 7.0, "zz": 1.0}, outside / "x.png", ylabel="stolen")
    (outside / "secret.txt").write_text("top secret: hunter2\n")
    (run / "report.html").write_bytes(OLD_PAGE)
    return {"run": run, "outside_png": outside / "x.png", "secret": outside / "secret.txt", "tmp": tmp_path}


def write_report(run: Path, *blocks: dict) -> None:
    (run / "report.json").write_text(json.dumps({"title": "t", "blocks": list(blocks)}))


def fig_block(path) -> dict:
    return {"type": "figure", "path": path, "caption": "c"}


def etc_file() -> Path:
    return next(p for p in (Path("/etc/hostname"), Path("/etc/passwd"), Path("/etc/os-release")) if p.exists())


class OpenSpy:
    """Records every path handed to os.open and io.open (pathlib's read_bytes goes through io.open)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.paths: list[str] = []
        real_os_open, real_io_open = os.open, io.open

        def os_open(path, *a, **kw):
            self.paths.append(os.fspath(path))
            return real_os_open(path, *a, **kw)

        def io_open(file, *a, **kw):
            if isinstance(file, (str, bytes, os.PathLike)):
                self.paths.append(os.fsdecode(file))
            return real_io_open(file, *a, **kw)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(io, "open", io_open)

    def opened_under(self, folder: Path) -> list[str]:
        root = os.path.realpath(folder)
        return [p for p in self.paths if os.path.realpath(p).startswith(root + os.sep) or os.path.realpath(p) == root]


def _refused_cases(w: dict[str, Path]) -> dict[str, tuple[object, Path]]:
    """name -> (the figure path written in report.json, the outside file it must not read)."""
    run, png = w["run"], w["outside_png"]
    (run / "figures" / "link.png").symlink_to(png)
    (run / "figures" / "secret_link.png").symlink_to(w["secret"])
    return {
        "etc_file": (str(etc_file()), etc_file()),
        "absolute_png": (str(png), png),
        "dotdot": ("../outside/x.png", png),
        "dotdot_inside_figures": ("figures/../../outside/x.png", png),
        "dotdot_resolving_inside": ("figures/../figures/ok.png", png),  # '..' is refused even when it stays inside
        "symlink_out_png": ("link.png", png),
        "symlink_out_text": ("secret_link.png", w["secret"]),
    }


CASES = [
    "etc_file",
    "absolute_png",
    "dotdot",
    "dotdot_inside_figures",
    "dotdot_resolving_inside",
    "symlink_out_png",
    "symlink_out_text",
]


@pytest.mark.parametrize("case", CASES)
def test_report_command_refuses_a_figure_from_outside_the_run_folder(world, case, capsys, monkeypatch):
    run = world["run"]
    path, outside = _refused_cases(world)[case]
    write_report(run, fig_block("ok.png"), fig_block(path))
    spy = OpenSpy(monkeypatch)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "refused" in err and "\n  fix: " in err, err
    assert "Traceback" not in err
    assert not spy.opened_under(outside.parent) and str(outside) not in spy.paths  # never opened, let alone read
    page = (run / "report.html").read_bytes()
    assert page == OLD_PAGE  # nothing written: the old page stays as it was
    assert base64.b64encode(outside.read_bytes()) not in page


@pytest.mark.parametrize("case", CASES)
def test_render_html_raises_figure_refused(world, case):
    path, outside = _refused_cases(world)[case]
    write_report(world["run"], fig_block(path))
    with pytest.raises(FigureRefused, match="refused") as e:
        render_html(world["run"])
    assert e.value.fix and "report.json" in e.value.fix


def test_a_figures_folder_that_is_a_symlink_out_is_refused(world, capsys):
    run = world["run"]
    (run / "figures" / "ok.png").unlink()
    (run / "figures").rmdir()
    (run / "figures").symlink_to(world["outside_png"].parent)
    write_report(run, fig_block("x.png"))
    assert main(["report", str(run)]) == 2
    assert "outside the run folder" in capsys.readouterr().err
    assert base64.b64encode(world["outside_png"].read_bytes()) not in (run / "report.html").read_bytes()


def test_a_file_inside_that_is_not_a_png_is_refused(world, capsys):
    run = world["run"]
    (run / "figures" / "notes.png").write_text("not an image\n")
    (run / "config.json").write_text(json.dumps({"experiment": "e"}))
    for path in ("notes.png", "config.json"):
        write_report(run, fig_block(path))
        assert main(["report", str(run)]) == 2
        assert "not a PNG" in capsys.readouterr().err
    assert (run / "report.html").read_bytes() == OLD_PAGE


@pytest.mark.parametrize("path", ["", "a\x00b.png", 7, None, ["ok.png"], "C:\\x.png"])
def test_odd_figure_paths_are_refused_cleanly(world, path, capsys):
    write_report(world["run"], fig_block(path))
    assert main(["report", str(world["run"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fix: " in err


@pytest.mark.timeout(30)
def test_a_fifo_in_place_of_a_figure_is_refused_not_waited_on(world, capsys):
    os.mkfifo(world["run"] / "figures" / "pipe.png")
    write_report(world["run"], fig_block("pipe.png"))
    assert main(["report", str(world["run"])]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_a_symlink_loop_is_refused(world, capsys):
    fig = world["run"] / "figures"
    (fig / "a.png").symlink_to(fig / "b.png")
    (fig / "b.png").symlink_to(fig / "a.png")
    write_report(world["run"], fig_block("a.png"))
    assert main(["report", str(world["run"])]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_figures_inside_the_folder_still_render(world, capsys):
    run = world["run"]
    (run / "figures" / "alias.png").symlink_to(run / "figures" / "ok.png")  # a link that stays inside: fine
    (run / "figures" / "dangling.png").symlink_to(run / "figures" / "gone.png")
    write_report(
        run,
        fig_block("ok.png"),
        fig_block("figures/ok.png"),
        fig_block("alias.png"),
        fig_block("nope.png"),
        fig_block("dangling.png"),
    )
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    ok = base64.b64encode((run / "figures" / "ok.png").read_bytes()).decode()
    assert page.count(ok) == 3
    assert "missing figure nope.png" in page and "missing figure dangling.png" in page


def test_report_json_that_links_outside_is_refused(world, capsys):
    outside_json = world["tmp"] / "outside" / "report.json"
    outside_json.write_text(json.dumps({"title": "from outside", "blocks": []}))
    (world["run"] / "report.json").symlink_to(outside_json)
    assert main(["report", str(world["run"])]) == 2
    assert "outside the run folder" in capsys.readouterr().err
    assert (world["run"] / "report.html").read_bytes() == OLD_PAGE


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        b'{"title": 3, "blocks": []}',
        b'{"title": "t", "blocks": {}}',
        b'{"title": "t", "blocks": [7]}',
        b'{"title": "t", "blocks": [{"type": "script", "text": "x"}]}',
        b'{"title": "t", "blocks": [{"type": "text"}]}',
        b'{"title": "t", "blocks": [{"type": "heading", "text": "h", "level": "abc"}]}',
        b'{"title": "t", "blocks": [{"type": "heading", "text": "h", "level": 1e999}]}',
        b'{"title": "t", "blocks": [{"type": "table", "columns": "a", "rows": []}]}',
        b'{"title": "t", "blocks": [{"type": "table", "columns": [], "rows": [1]}]}',
        b'{"title": "t", "blocks": [{"type": "figure", "path": "ok.png", "caption": 5}]}',
        b"[" * 100000,
    ],
)
def test_a_malformed_report_json_is_a_clean_error(world, content, capsys):
    (world["run"] / "report.json").write_bytes(content)
    assert main(["report", str(world["run"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "report.json" in err and "fix: " in err
    assert (world["run"] / "report.html").read_bytes() == OLD_PAGE
    with pytest.raises(ReportError):
        Report.load(world["run"])


@pytest.mark.parametrize("name,content", [("config.json", b"{oops"), ("env.json", b"[1]")])
def test_a_malformed_config_or_env_json_is_a_clean_error(world, name, content, capsys):
    write_report(world["run"], fig_block("ok.png"))
    (world["run"] / name).write_bytes(content)
    assert main(["report", str(world["run"])]) == 2
    assert name in capsys.readouterr().err


def test_report_of_a_file_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["report", str(tmp_path / "f")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_report_figure_refuses_a_path_with_dotdot(tmp_path):
    r = Report("t")
    with pytest.raises(ValueError, match=r"'\.\.'"):
        r.figure("../x.png")
    r.figure(tmp_path / "figures" / "y.png")  # an absolute path is stored by its name, as before
    assert r.blocks[-1]["path"] == "y.png"


def test_long_table_cells_wrap_in_the_page_and_stay_escaped(tmp_path):
    r = Report("t")
    r.table([{"<th>" + LONG: "<td>" + LONG, "short": "a few words"}])
    page = (r.save(tmp_path)).read_text()
    assert ".brk{overflow-wrap:anywhere}" in page  # a cell with a long word may break it anywhere
    assert "<td class='brk'>&lt;td&gt;" + LONG in page and "<td>a few words</td>" in page  # only that cell
    assert "<div class='scroll'><table>" in page and ".scroll{overflow-x:auto" in page  # tables scroll sideways
    assert "<th>xxx" not in page and "&lt;td&gt;" + LONG in page


# --- figure sizes: labels and text are capped ---------------------------------------------------------------


def _classes(n: int, long: str | None = None) -> list[str]:
    names = [f"class{i}" for i in range(n)]
    if long is not None:
        names[3] = long
    return names


@pytest.mark.parametrize("long", [LONG, "\n".join(["line"] * 5000), "$\\frac$ " + LONG, "$x^$"])
def test_a_huge_class_name_gives_a_confusion_matrix_of_normal_size(tmp_path, long):
    cm = np.arange(100).reshape(10, 10)
    base = png_size(figures.confusion_matrix(cm, _classes(10), tmp_path / "base.png").read_bytes())
    size = png_size(figures.confusion_matrix(cm, _classes(10, long), tmp_path / "long.png", title=long).read_bytes())
    assert size[0] <= base[0] * 1.6 + 200 and size[1] <= base[1] * 1.6 + 200, (base, size)
    assert max(size) < 2000


def test_a_huge_class_name_gives_an_image_grid_of_normal_size(tmp_path):
    imgs = [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8) for _ in range(8)]
    kw = {"ncols": 4}
    base = figures.image_grid(imgs, tmp_path / "base.png", titles=_classes(8), row_labels=["r0", "r1"], **kw)
    long = figures.image_grid(
        imgs,
        tmp_path / "long.png",
        titles=[f"pred {LONG} 0.9\ntrue {LONG} 0.1"] + _classes(7),
        row_labels=[LONG, "$\\frac$"],
        title=LONG,
        **kw,
    )
    b, s = png_size(base.read_bytes()), png_size(long.read_bytes())
    assert s[0] <= b[0] * 1.8 + 200 and s[1] <= b[1] * 1.8 + 200, (b, s)
    assert max(s) < 2000


def test_long_names_in_bars_curves_and_line_plots_stay_normal_size(tmp_path):
    p = figures.bars({LONG: 1.0, LONG + "y": 2.0, "b": 3.0}, tmp_path / "bars.png", ylabel=LONG, title=LONG)
    assert max(png_size(p.read_bytes())) < 2000
    hist = {LONG: [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_acc": 0.5, "val_acc": 0.4}]}
    p = figures.curves(hist, tmp_path / "curves.png", title=LONG)
    assert max(png_size(p.read_bytes())) < 2000
    p = figures.line_plot({LONG: ([0, 1], [1, 2])}, tmp_path / "line.png", xlabel=LONG, ylabel=LONG, title=LONG)
    assert max(png_size(p.read_bytes())) < 2000


def test_cap():
    assert figures.cap("short") == "short"
    c = figures.cap(LONG)
    assert len(c) == figures.LABEL_CHARS and c.endswith("…")
    assert figures.cap("a\nb\nc\nd", 10, 2) == "a\nb…"
    assert figures.cap("$5 and $6") == "\\$5 and \\$6"  # drawn as dollars, not mathtext
    assert figures.cap(figures.cap("$" + LONG)) == figures.cap("$" + LONG)


# --- concurrent writers of one figure -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_two_concurrent_writers_of_one_figure_both_succeed(tmp_path, monkeypatch):
    """Both writers have drawn their temp file before either renames it: with one fixed temp name the second
    rename found nothing (FileNotFoundError)."""
    from matplotlib.figure import Figure

    real = Figure.savefig
    barrier = threading.Barrier(2, timeout=20)

    def savefig(self, *a, **kw):
        real(self, *a, **kw)
        barrier.wait()

    monkeypatch.setattr(Figure, "savefig", savefig)
    target = tmp_path / "figures" / "same.png"
    errors: list[BaseException] = []

    def write(v: float) -> None:
        try:
            figures.bars({"a": v, "b": 2 * v}, target, ylabel="y")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(v,)) for v in (1.0, 5.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert [p.name for p in target.parent.iterdir()] == ["same.png"]  # no temp file left behind


@pytest.mark.timeout(120)
def test_many_concurrent_writers_leave_one_valid_png(tmp_path):
    target = tmp_path / "f.png"
    errors: list[BaseException] = []

    def write(i: int) -> None:
        for j in range(3):
            try:
                figures.line_plot({"s": ([0, 1, 2], [i, j, i + j])}, target, xlabel="x", ylabel="y")
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not errors, errors
    assert png_size(target.read_bytes())[0] > 100
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_a_failed_figure_write_is_a_clean_error_and_keeps_the_old_figure(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    target = figures.bars({"a": 1.0}, tmp_path / "f.png", ylabel="y")
    before = target.read_bytes()

    def full_disk(self, fname, *a, **kw):
        if isinstance(fname, (str, os.PathLike)):
            Path(fname).write_bytes(b"\x89PNG partial")
        else:
            fname.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(DojoError, match="No space left") as e:  # a DojoError naming the path
        figures.bars({"a": 2.0}, target, ylabel="y")
    assert str(target) in e.value.problem and e.value.fix
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_figure_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        p = figures.bars({"a": 1.0}, tmp_path / "f.png", ylabel="y")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("content", [b"{bad", b"[1]", b"\xff\xfe"])
def test_compare_of_a_run_with_a_malformed_summary_is_a_clean_error(tmp_path, content, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for r in (a, b):
        r.mkdir()
    (a / "summary.json").write_text("{}")
    (b / "summary.json").write_bytes(content)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "summary.json" in err and "fix: " in err
