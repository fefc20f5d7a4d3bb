"""`torchdojo report RUN`: re-render a run's report.html from its folder alone."""

import argparse
from pathlib import Path

NAME = "report"
HELP = "re-render report.html of a run folder from the folder alone"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder (runs/<experiment>/<timestamp>-<id>)")


def main(args: argparse.Namespace) -> int:
    from torchdojo.errors import DojoError
    from torchdojo.report import render_html

    run = Path(args.run)
    if not (run / "report.json").exists():
        raise DojoError(f"{run} has no report.json", "pass a run folder written by `torchdojo run`")
    print(render_html(run))
    return 0
