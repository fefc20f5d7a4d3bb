"""Benchmark: grade a generated conv2d class with the fork server and without it (a fresh interpreter per
submission), check every verdict against the class's expected.json, and print submissions per minute.

Each mode grades into a fresh folder (nothing reused); the class is made by benchmarks/make_class.py (or
given with --class). Prints one JSON line per mode and exits 1 if any verdict is wrong.

usage: python benchmarks/bench_grade.py [--n 100] [--jobs 2] [--class DIR] [--timeout 20] [--modes fork,fresh]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_class import make_class, mismatches  # noqa: E402

from torchdojo.verify import grade, report  # noqa: E402
from torchdojo.verify.sandbox import Limits  # noqa: E402

CHECKERS = {"fork": grade.fork_server_checker, "fresh": grade.fresh_interpreter_checker}


def grade_mode(mode: str, klass: Path, out: Path, jobs: int, limits: Limits) -> tuple[dict, list[str]]:
    """Grade the class one way; (figures, mismatches against expected.json)."""
    settings = grade.make_settings("conv2d", limits=limits)
    start = time.perf_counter()
    with grade.grading_folder(out, klass / "submissions") as folder:
        res = grade.grade_class(
            settings, klass / "submissions", folder, jobs=jobs, checker=CHECKERS[mode], progress=lambda _: None
        )
        report.write_outputs(folder, res, settings)
    seconds = time.perf_counter() - start
    wrong = mismatches(json.loads((klass / "expected.json").read_text()), res.results)
    figures = {
        "mode": mode,
        "submissions": len(res.results),
        "jobs": jobs,
        "seconds": round(seconds, 1),
        "per_minute": round(60 * len(res.results) / seconds, 1),
        "verdicts_right": len(res.results) - len(wrong),
        "checker_seconds_median": sorted(r["seconds"] for r in res.results)[len(res.results) // 2],
    }
    return figures, wrong


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="students in the generated class (default 100)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--class", dest="klass", type=Path, default=None, help="a class made by make_class.py")
    p.add_argument("--timeout", type=float, default=Limits().wall_s, help="wall clock per submission")
    p.add_argument("--modes", default="fork,fresh", help="fork (fork server), fresh (a new interpreter each)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-grade-") as tmp:
        klass = args.klass
        if klass is None:
            klass = Path(tmp) / "class"
            from torchdojo.verify.grade import target_properties

            make_class(klass, args.n, target_properties("conv2d", False)[0])
        failed = False
        for mode in args.modes.split(","):
            figures, wrong = grade_mode(mode, klass, Path(tmp) / f"out-{mode}", args.jobs, Limits(wall_s=args.timeout))
            print(json.dumps(figures), flush=True)
            for line in wrong:
                print(f"  WRONG {line}", flush=True)
            failed |= bool(wrong)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
