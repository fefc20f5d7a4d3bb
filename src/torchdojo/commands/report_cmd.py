"""`torchdojo report RUN`: re-render a run's report.html from its folder alone.

Only files inside RUN are read: a figure block of report.json that names an absolute path, a path with '..', a
symlink out of the folder or a file that is not a PNG is refused (an error, exit 2, report.html left as it was)."""

import argparse
import os
from pathlib import Path

NAME = "report"
HELP = "re-render report.html of a run folder from the folder alone"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder (runs/<experiment>/<timestamp>-<id>)")


def main(args: argparse.Namespace) -> int:
    from torchdojo.errors import DojoError
    from torchdojo.report import render_html

    run = Path(args.run)
    if not run.is_dir():
        raise DojoError(f"{run} is not a folder", "pass a run folder written by `torchdojo run`")
    if not os.path.lexists(run / "report.json"):
        raise DojoError(f"{run} has no report.json", "pass a run folder written by `torchdojo run`")
    from torchdojo.runs import locked

    with locked(run):  # not while a run (or another `report`) is writing the folder
        print(render_html(run))
    return 0
