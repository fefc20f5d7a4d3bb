"""An experiment as a Jupyter notebook: it runs through the Python API, then one section per part of the report.

`write(experiment, output, ...)` builds the notebook with nbformat and (unless `execute=False`) executes it
with nbclient in a kernel of this very interpreter (a kernel spec pointing at `sys.executable`, written to a
temporary folder: nothing is installed, nothing is fetched). Execution happens in two steps in one kernel: the
first cells run the experiment (`r = torchdojo.run(...)`); then the run's report.json is read and its
sections are added (one per level-2 heading: the report's parts follow the course items, C1, C2, ...), each
with the report's headings and text as markdown cells and its figures and tables as the outputs of code
cells (`torchdojo.notebook.show(r, i, ...)`), which are executed in the same kernel. So the notebook holds
the report's own words and numbers, and its figures as image outputs.
"""

import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchdojo.errors import DojoError

KERNEL = "python3"  # the name the notebook records: Jupyter opens it with the user's own Python 3 kernel
MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<#|$~])")  # and, at a line's start, > + - = and "1."


def _md(text: str) -> str:
    """Report text as markdown showing the same characters: markdown and HTML syntax escaped, the report's
    own '- ' lists kept as lists."""
    lines = []
    for line in text.splitlines():
        bullet = re.match(r"(\s*)- ", line)
        head, rest = (bullet.group(0), line[bullet.end() :]) if bullet else ("", line)
        rest = MARKDOWN_SPECIAL.sub(r"\\\1", rest)
        if not bullet:  # what would start a list, a rule or a heading underline
            rest = re.sub(r"^(\s*)([>+\-=])", r"\1\\\2", rest)
            rest = re.sub(r"^(\s*\d+)([.)])", r"\1\\\2", rest)
        lines.append(head + rest)
    return "\n".join(lines)


def _block_markdown(block: dict[str, Any]) -> str:
    t = block["type"]
    if t == "heading":
        return "#" * min(max(int(block.get("level", 2)), 2), 4) + " " + _md(block["text"])
    if t == "warning":
        return "> **Warning:** " + _md(block["text"]).replace("\n", "\n> ")
    if t == "code":
        fence = "~~~~" if "```" in block["text"] else "```"
        return f"{fence}\n{block['text']}\n{fence}"
    return _md(block["text"])


def sections(blocks: list[dict[str, Any]]) -> list[list[tuple[int, dict[str, Any]]]]:
    """The report's blocks (with their indices) split at each level-1/2 heading: one section per part."""
    out: list[list[tuple[int, dict[str, Any]]]] = []
    for i, b in enumerate(blocks):
        if not out or (b["type"] == "heading" and int(b.get("level", 2)) <= 2):
            out.append([])
        out[-1].append((i, b))
    return out


def section_cells(blocks: list[dict[str, Any]], result_var: str = "r") -> list[Any]:
    """Per section, in the report's order: a markdown cell for each run of headings and text, a code cell
    `torchdojo.notebook.show(r, i, ...)` for each run of figures and tables (blocks i, ...)."""
    import nbformat.v4 as nbf

    cells: list[Any] = []
    for section in sections(blocks):
        runs: list[tuple[bool, list[Any]]] = []  # (is a figure/table run, its markdown texts or block indices)
        for i, b in section:
            shown = b["type"] in ("figure", "table")
            if not runs or runs[-1][0] != shown:
                runs.append((shown, []))
            runs[-1][1].append(i if shown else _block_markdown(b))
        for shown, items in runs:
            if shown:
                cells.append(nbf.new_code_cell(f"torchdojo.notebook.show({result_var}, {', '.join(map(str, items))})"))
            else:
                cells.append(nbf.new_markdown_cell("\n\n".join(items)))
    return cells


def show(result: Any, *blocks: int) -> None:
    """Display blocks `blocks` (indices into the run's report.json) in a notebook: figures as PNG images with
    their captions (read as report.html reads them: only PNGs inside the run folder), tables as HTML tables
    formatted as in the report, text as markdown."""
    from IPython.display import HTML, Image, Markdown, display

    from torchdojo.report import Report
    from torchdojo.report.document import _figure_bytes
    from torchdojo.report.page import table_html
    from torchdojo.results import Result

    run_dir = (result if isinstance(result, Result) else Result(result)).path
    doc = Report.load(run_dir)
    for i in blocks:
        if not 0 <= i < len(doc.blocks):
            raise DojoError(f"{run_dir}/report.json has no block {i}", "re-generate the notebook for this run")
        b = doc.blocks[i]
        if b["type"] == "figure":
            png = _figure_bytes(run_dir, b["path"])
            display(Image(data=png) if png is not None else Markdown(f"*missing figure {_md(b['path'])}*"))
        elif b["type"] == "table":  # formatted as the report formats it; wide tables scroll sideways
            page = table_html(b["columns"], b["rows"], b.get("caption", ""))
            display(HTML(f"<div style='overflow-x:auto;max-width:100%'>{page}</div>"))
            continue
        else:
            display(Markdown(_block_markdown(b)))
            continue
        if b.get("caption"):
            display(Markdown(f"*{_md(b['caption'])}*"))


def show_report(result: Any) -> None:
    """Display the whole report of a run, block by block (what a notebook written with `execute=False` does)."""
    from torchdojo.report import Report
    from torchdojo.results import Result

    run_dir = (result if isinstance(result, Result) else Result(result)).path
    show(run_dir, *range(len(Report.load(run_dir).blocks)))


def _call(name: str, scale: str, preset: str | None, given: dict[str, Any], runs_dir: str, options: dict) -> str:
    """The `torchdojo.run(...)` line of the notebook (every value written with repr: no code from a setting)."""
    args = [repr(name), f"scale={scale!r}"]
    args += [f"preset={preset!r}"] if preset else []
    args += [f"{k}={v!r}" for k, v in options.items() if v not in (None, False, "auto")]
    args += [f"runs_dir={runs_dir!r}"]
    args += [f"set={given!r}"] if given else []
    return f"r = torchdojo.run({', '.join(args)})\nprint('run folder:', r.path)"


def intro_cells(
    name: str, title: str, scale: str, preset: str | None, given: dict[str, Any], runs_dir: str, options: dict
) -> list:
    """The notebook's first cells: what it is (`title`: the run's report title), then the experiment run through
    the Python API."""
    import nbformat.v4 as nbf

    from torchdojo.experiments import EXPERIMENTS

    module = EXPERIMENTS.get(name)
    settings = ", ".join(f"`{k}={v}`" for k, v in given.items()) or "none"
    about = (
        f"# torchdojo {name}: {_md(title)}\n\n"
        f"Course tasks: {', '.join(module.MISSION_IDS)}. Scale `{scale}`"
        + (f", preset `{preset}`" if preset else "")
        + f"; settings: {settings}.\n\n"
        "The next cell runs the experiment with `torchdojo.run` (the same run as `torchdojo run` on the command "
        "line, into a run folder under `" + _md(runs_dir) + "`). Each section after it is one part of the run's "
        "report: its text as markdown, its figures and tables as the outputs of the code cell below the text."
    )
    return [
        nbf.new_markdown_cell(about),
        nbf.new_code_cell("import torchdojo"),
        nbf.new_code_cell(_call(name, scale, preset, given, runs_dir, options)),
    ]


def closing_cells() -> list:
    import nbformat.v4 as nbf

    return [
        nbf.new_markdown_cell("## The run's numbers\n\n`r.summary` (summary.json) and, per stage, `r.history`."),
        nbf.new_code_cell("r.summary"),
        nbf.new_code_cell("for stage, epochs in r.history.items():\n    print(stage)\n    display(epochs)"),
    ]


@contextlib.contextmanager
def _kernel() -> Iterator[tuple[Any, dict[str, str]]]:
    """A kernel manager for a kernel of this interpreter (its spec in a temporary folder) and the kernel's
    environment (IPython's profile folder there too: the user's startup files and history are not touched)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    with tempfile.TemporaryDirectory(prefix="torchdojo-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL
        spec_dir.mkdir(parents=True)
        argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        spec = {"argv": argv, "display_name": "Python 3 (torchdojo)", "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        ksm = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
        # IPC sockets in the temporary folder: no TCP port is opened for the kernel
        km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm, transport="ipc", ip=str(Path(tmp) / "ipc"))
        yield km, {**os.environ, "IPYTHONDIR": str(Path(tmp) / "ipython")}


def _run_folder(cell: Any) -> Path:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            m = re.search(r"^run folder: (.+)$", out.get("text", ""), re.M)
            if m:
                return Path(m.group(1).strip())
    raise DojoError("the notebook's run cell printed no run folder", "run the notebook in Jupyter to see why")


def _execute(nb: Any, cwd: Path) -> None:
    """Run the notebook's cells, then add the report's sections (read from the run folder the run cell printed)
    and the closing cells, and run those in the same kernel."""
    from nbclient import NotebookClient

    from torchdojo.report import Report

    with _kernel() as (km, env):
        client = NotebookClient(
            nb,
            km=km,
            timeout=None,
            kernel_name=KERNEL,
            resources={"metadata": {"path": str(cwd)}},
            extra_arguments=["--HistoryManager.hist_file=:memory:"],
        )
        with client.setup_kernel(env=env, cleanup_kc=True):  # the kernel is shut down at the end
            for i, cell in enumerate(nb.cells):
                client.execute_cell(cell, i)
            run_dir = _run_folder(nb.cells[-1])
            start = len(nb.cells)
            nb.cells.extend(section_cells(Report.load(run_dir if run_dir.is_absolute() else cwd / run_dir).blocks))
            nb.cells.extend(closing_cells())
            for i in range(start, len(nb.cells)):
                client.execute_cell(nb.cells[i], i)


def write(
    experiment: str,
    output: str | Path,
    *,
    scale: str = "small",
    preset: str | None = None,
    settings: list[str] | dict[str, Any] | None = None,
    execute: bool = True,
    runs_dir: str = "runs",
    device: str = "auto",
    data_dir: str | None = None,
    download: bool = False,
) -> Path:
    """Write (and by default execute) the notebook of `experiment` to `output`; returns its path.

    The settings are checked first, as `torchdojo run` checks them (an unknown key, a bad value or a setting
    the experiment does not use is refused before a kernel starts). The kernel works in the notebook's folder:
    a relative `runs_dir` is under it. A failing cell ends with a DojoError; the notebook is still written,
    with the error in that cell's output."""
    import nbformat
    import nbformat.v4 as nbf

    from torchdojo.config import parse_overrides
    from torchdojo.experiments import EXPERIMENTS
    from torchdojo.experiments.base import build_config, report_title
    from torchdojo.runs import atomic_write_bytes

    given = parse_overrides(settings)
    module = EXPERIMENTS.get(experiment)
    cfg = build_config(module, scale, preset, given)
    out = Path(output)
    if out.suffix != ".ipynb":
        raise DojoError(f"{out} does not end in .ipynb", f"use -o {out.with_suffix('.ipynb')}")
    options = {"device": device, "data_dir": data_dir, "download": download}
    nb = nbf.new_notebook(
        cells=intro_cells(experiment, report_title(module, cfg), scale, preset, given, runs_dir, options)
    )
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    failure = None
    if execute:
        from nbclient.exceptions import CellExecutionError

        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            _execute(nb, out.parent.resolve())
        except CellExecutionError as e:
            failure = e
    else:
        note = "Run all cells: the last one shows the run's report (its text, figures and tables) block by block."
        nb.cells += [
            nbf.new_markdown_cell(f"## The report\n\n{note}"),
            nbf.new_code_cell("torchdojo.notebook.show_report(r)"),
        ]
    nbformat.validate(nb)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, nbformat.writes(nb).encode())
    if failure is not None:
        what = f"{failure.ename}: {failure.evalue}".strip()[:300]
        raise DojoError(f"a cell of {out} failed: {what}", f"open {out} to see the cell and its error output")
    return out
