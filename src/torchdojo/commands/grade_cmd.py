"""`torchdojo grade TARGET SUBMISSIONS --out DIR`: grade a whole class with the isolated checker."""

import argparse
import os
import sys

from torchdojo.verify.options import LIMIT_FLAGS, TARGET_NAMES, Limits  # torch-free: --help never imports torch

NAME = "grade"
HELP = "grade a class: one isolated check per student, grades.csv, feedback per student, summary.html"
DESCRIPTION = """Grade every submission in SUBMISSIONS (one .py file, folder or .zip per student) against TARGET
with the same isolated checker as `torchdojo check`, in parallel, and write into DIR:
  grades.csv          student, the points of each property, points, total, seconds, note
  feedback/NAME.md    per student: each failure with the `torchdojo check` command that reproduces it
  summary.html        score histogram, the most failed properties, the slowest submissions
  results/NAME.json   the verdicts; grading again into DIR skips students whose files and settings are unchanged
The entry FILE.py:Class is found by --entry (a glob on the file path, then the class name). Students run
`torchdojo check` on the public cases; give --seed N (repeatable) to grade on hidden cases over the same
properties. Points per property come from --rubric (TOML or JSON, see docs/GRADING.md) or the default
(forward 4, each gradient 2, each rules property 2, parameters 1).
Examples:
  torchdojo grade conv2d submissions/ --out grades/
  torchdojo grade conv2d submissions/ --out grades/ --seed 1234 --seed 98765 --rubric conv2d.toml --jobs 4"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", choices=TARGET_NAMES, help="what the students implemented")
    p.add_argument("submissions", metavar="SUBMISSIONS", help="folder with one .py, folder or .zip per student")
    p.add_argument("--out", required=True, metavar="DIR", help="where the grades go (created; reused to resume)")
    p.add_argument(
        "--entry", default=None, metavar="GLOB:Class", help='the file and class to check (e.g. "*.py:Conv2d")'
    )
    p.add_argument(
        "--jobs", type=int, default=None, metavar="N", help="submissions checked at once (default: the CPU cores)"
    )
    p.add_argument("--rubric", default=None, metavar="FILE", help="points per property (.toml or .json)")
    p.add_argument("--seed", type=int, action="append", default=None, metavar="N", help="a hidden seed (repeatable)")
    p.add_argument("--max-examples", type=int, default=None, metavar="N", help="random cases per seed (default 50)")
    p.add_argument("--allow-builtin", action="store_true", help="do not check the rules (built-in layers allowed)")
    p.add_argument("--force", action="store_true", help="grade every submission again, even unchanged ones")
    p.add_argument("--no-fork-server", action="store_true", help="a fresh interpreter per submission (slower)")
    add_limit_arguments(p)


LIMIT_HELP = {  # Limits field: (type, metavar, help)
    "wall_s": (float, "S", "wall-clock seconds per submission"),
    "cpu_s": (float, "S", "CPU seconds per submission"),
    "memory_mb": (int, "MB", "memory (address space) on top of torch"),
    "file_mb": (int, "MB", "largest file it may write; cap on its output"),
    "nproc": (int, "N", "extra processes/threads it may start"),
    "output_kb": (int, "KB", "stdout/stderr kept for the feedback, each"),
}


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("limits of each submission's process (as torchdojo check)")
    defaults = Limits()
    for field, (kind, metavar, text) in LIMIT_HELP.items():
        g.add_argument(
            LIMIT_FLAGS[field], dest=f"limit_{field}", type=kind, default=None, metavar=metavar,
            help=f"{text} ({getattr(defaults, field)})",
        )  # fmt: skip


def _limits(args: argparse.Namespace) -> Limits:
    given = {f: getattr(args, f"limit_{f}") for f in LIMIT_HELP}
    return Limits(**{k: v for k, v in given.items() if v is not None})


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from torchdojo.errors import DojoError
    from torchdojo.verify import grade, report

    jobs = args.jobs if args.jobs is not None else len(os.sched_getaffinity(0))
    if jobs < 1:
        raise DojoError(f"--jobs must be >= 1, got {jobs}")
    settings = grade.make_settings(
        args.target,
        entry=args.entry,
        rubric=Path(args.rubric) if args.rubric else None,
        seeds=args.seed,
        max_examples=args.max_examples,
        allow_builtin=args.allow_builtin,
        limits=_limits(args),
    )
    checker = grade.fresh_interpreter_checker if args.no_fork_server else grade.fork_server_checker
    with grade.grading_folder(Path(args.out), Path(args.submissions)) as out:
        try:
            res = grade.grade_class(settings, Path(args.submissions), out, jobs=jobs, force=args.force, checker=checker)
        except KeyboardInterrupt:
            print("interrupted; the students graded so far are kept: run the same command to go on", file=sys.stderr)
            return 130
        report.write_outputs(out, res, settings)
    print(f"{res.summary()}\n  {out / 'grades.csv'}\n  {out / 'feedback'}/\n  {out / 'summary.html'}")
    return 0
